"""``python -m crystal_xrdcnn.make_data --seed 0 --out FILE``: see :mod:`crystal_xrdcnn.data`."""

from crystal_xrdcnn.data import main

if __name__ == "__main__":
    raise SystemExit(main())
