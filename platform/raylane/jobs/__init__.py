"""Ray jobs: the table of job kinds (:mod:`.kinds`), job configs (:mod:`.spec`), how one is
submitted (:mod:`.submission`) and run (:mod:`.run`), Ray's job API (:mod:`.client`) and what jobs
cost (:mod:`.costs`)."""
