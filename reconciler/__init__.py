"""reconciler: Terraform for AI-generated video (Veo 3.1 through the GPTProto API)."""

__version__ = "0.2.0"
