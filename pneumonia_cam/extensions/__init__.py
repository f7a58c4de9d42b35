"""Beyond the article: ``gradcam`` (Grad-CAM, Selvaraju et al. 2017), ``map_model`` (the pooled class-map
head and the dilated ``layer4``), ``saliency`` (more maps from the same model), ``localization`` (scoring
a map against the lesion masks) and ``feature_cache`` (run a frozen backbone once, train the head many
times)."""
