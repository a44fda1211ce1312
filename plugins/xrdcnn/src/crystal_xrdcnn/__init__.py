"""crystal-xrdcnn: powder XRD → crystal system / extinction group / space group (after Park et al., IUCrJ 2017)."""

__version__ = "0.1.0"
