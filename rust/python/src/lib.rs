//! `tinyfast._native`: thin PyO3 bindings over tinyfast-core. Only type conversion lives here:
//! [`runtime`] is the `Runtime` class, [`convert`] turns Python values into core inputs and core
//! results into numpy arrays, [`errors`] maps core errors (and panics) to Python exceptions.
//! [`kernels_bench`] is the `kernels` submodule: single kernels for the micro-benchmarks.

mod augment;
mod convert;
mod errors;
mod kernels_bench;
mod runtime;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tinyfast_core::cpu::CpuCapabilities;

/// The CPU capabilities the int8 runtime sees, as a dict:
/// `{"arch": str, "features": {name: bool}, "kernels": [str, fastest first], "best_kernel": str}`.
#[pyfunction]
fn cpu_capabilities(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let caps = CpuCapabilities::detect();
    let out = PyDict::new(py);
    out.set_item("arch", caps.arch)?;
    let features = PyDict::new(py);
    for (name, on) in &caps.features {
        features.set_item(*name, *on)?;
    }
    out.set_item("features", features)?;
    let kernels: Vec<&str> = caps.kernels.iter().map(|k| k.name()).collect();
    out.set_item("kernels", kernels)?;
    out.set_item("best_kernel", caps.best().name())?;
    Ok(out)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", tinyfast_core::VERSION)?;
    m.add_function(wrap_pyfunction!(cpu_capabilities, m)?)?;
    m.add_class::<runtime::PyRuntime>()?;
    augment::register(m)?;
    kernels_bench::register(m)?;
    Ok(())
}
