"""priorauth-cds: a CDS Hooks 2.0 / Da Vinci CRD service for payer prior-authorization drug policies."""

__version__ = "0.1.0"
