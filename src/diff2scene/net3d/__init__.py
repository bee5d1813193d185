"""The 3D branch: MinkUNet18A on sparse voxels, mask-distillation training and inference."""
