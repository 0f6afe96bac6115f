"""Data: readers (one per format), splits and fractions, decoding, and the device-side pipeline
(uint8 tensors on the training device, batched augmentation, mixup/cutmix)."""
