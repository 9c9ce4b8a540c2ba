"""``python -m utils.export MODEL --format onnx|torchscript -o FILE``: the export command (library: utils.deploy)."""
from utils.deploy.export import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
