"""FHIR R4 resources -> typed policy facts, through code tables kept as data files with their sources."""
