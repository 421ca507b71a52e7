/* An empty Python module, so that setuptools builds and installs the kernels as an extension;
 * fewmult/runtime/kernels.py loads the same file with ctypes and calls the fm_* functions. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels",
                                            "fewmult.runtime's compiled kernels (called through ctypes)",
                                            -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
