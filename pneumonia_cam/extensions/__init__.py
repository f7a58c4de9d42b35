"""Beyond the article: ``gradcam`` (Grad-CAM, Selvaraju et al. 2017), ``localization`` (scoring a map
against the lesion masks) and ``feature_cache`` (run a frozen backbone once, train the head many times)."""
