"""Evaluation of an assembled DDM: domain Fréchet distances, optional Inception FID, sample grids.

Used by the evaluate stage and the DDM-vs-monolith benchmark. Measures only: never trains
a generator and never writes to the store.
"""
