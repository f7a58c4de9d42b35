"""What the steps lean on but a reader of the article can skip: ``phantoms``, ``images``, ``splits``,
``runtime``, ``config``, ``weights``, ``checkpoint``, ``report``, ``distributed``."""
