"""pneumonia_cam: detect pneumonia in chest X-rays with a transfer-learned ResNet and show where it
looked with a Class Activation Map (Zhou et al., CVPR 2016).

The package mirrors the tutorial section by section; data flows one way:
``phantoms/data -> gap/model -> fit/metrics -> hook/weighted_sum/zoom -> overlay``, and the command-line
modules ``train`` and ``cam`` only wire those together.
"""

__version__ = "0.1.0"

# Class order is part of the contract: ImageFolder sorts folder names, and the CAM weight row
# ``model.fc[0].weight[1]`` is PNEUMONIA only because "NORMAL" < "PNEUMONIA".
CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
