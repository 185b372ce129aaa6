"""``python -m driftline.stack.chserver --path DIR [...]`` (``driftline.stack.chserver.cli``)."""

from driftline.stack.chserver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
