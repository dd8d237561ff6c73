"""multifcl: federated class-incremental learning on pretrained vision transformers.

Plain PyTorch; the Flower glue lives in the top-level clients/, server/ and strategies/.
"""
