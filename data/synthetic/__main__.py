"""``python -m data.synthetic --out DIR --num N --seed S [--video PATH ...]`` (see ``data.synthetic.cli``)."""
from data.synthetic.cli import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
