"""Names and formats of what the lanes publish: references and storage prefixes (:mod:`.refs`), and
the one tokenizer format the corpus, the trainer and the tiny model share (:mod:`.tokenizer`)."""
