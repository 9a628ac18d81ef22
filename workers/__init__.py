"""dada: the analysis worker (readers, pre-processing, STXM algorithms, Dask)."""
