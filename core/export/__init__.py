"""Export a trained model to OpenVINO IR or ONNX, checked against the torch model before it is kept.

Only constants here: the command line reads them to build its flags without importing torch.
"""

#: What ``python -m core export --format`` writes.
FORMATS = ("openvino", "onnx")
#: OpenVINO precisions an export may be kept at: ``bf16`` (inference precision, where the CPU has it)
#: and ``int8`` (NNCF post-training quantisation calibrated on training images) only where they pass
#: the parity check.
PRECISIONS = ("fp32", "bf16", "int8")
#: What ``--precision`` accepts: a precision, or ``auto`` (the default): bf16 where the CPU has it
#: natively and the parity rule accepts it, else fp32.
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: What ``--runtime`` accepts: the torch model, or the version's OpenVINO export.
RUNTIMES = ("torch", "openvino")
