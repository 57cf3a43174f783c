"""The OpenELM model: config and layer-wise scaling, the modelling file, masks, the decode plan and
CPU kernels, weight-only quantisation, CoreNet conversion, integrity checks, the uniform twin."""
