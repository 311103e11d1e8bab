//! Fusion functions: SQL that joins neural signals with behavioural events without a join.
//!
//! They know the layout (one file per channel, row groups of known sample ranges, events per
//! recording), so each reads only the samples it needs, straight from the signal files, and
//! time-locks, averages or aligns them in one pass.
//!
//! | function | what |
//! |---|---|
//! | `epochs(types, tmin, tmax [, channels [, recording]])` | rows time-locked to events |
//! | `erp(types, tmin, tmax [, channels [, recording]])` | event-related average per type, channel and time |
//! | `epoch_band_power(types, tmin, tmax, bands [, channels [, recording]])` | Welch band power per epoch and channel |
//! | `band_power(value, fs, fmin, fmax ORDER BY t)` | aggregate: Welch band power of a segment |
//! | `asof_events(left_types, right_types [, direction [, tolerance_s [, recording]]])` | each event with its nearest other event |
//! | `samples_asof(types [, direction [, tolerance_s [, channels [, recording]]]])` | samples with the event in force |
//! | `resample(rate [, channels [, recording [, method]]])` | channels on a common time grid |

mod args;
mod asof;
mod band;
mod epochs;
mod exec;
mod resample;
mod signal;

use std::sync::Arc;

use datafusion::logical_expr::AggregateUDF;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;

pub use band::{BandPower, welch_band_power};
pub use exec::FunctionExec;

use crate::view::QueryView;

/// Names of the table functions, for listings and the guard.
pub const TABLE_FUNCTIONS: &[&str] = &[
    "epochs",
    "erp",
    "epoch_band_power",
    "asof_events",
    "samples_asof",
    "resample",
];

/// Registers every fusion function on `ctx`, bound to one tenant's view.
pub fn register(ctx: &SessionContext, view: &Arc<QueryView>, store: &Arc<dyn ObjectStore>) {
    let env = Arc::new(signal::FunctionEnv {
        view: Arc::clone(view),
        store: Arc::clone(store),
    });
    ctx.register_udtf(
        "epochs",
        Arc::new(epochs::EpochsFunction::new(
            Arc::clone(&env),
            epochs::Mode::Rows,
        )),
    );
    ctx.register_udtf(
        "erp",
        Arc::new(epochs::EpochsFunction::new(
            Arc::clone(&env),
            epochs::Mode::Average,
        )),
    );
    ctx.register_udtf(
        "epoch_band_power",
        Arc::new(band::EpochBandPowerFunction::new(Arc::clone(&env))),
    );
    ctx.register_udtf(
        "asof_events",
        Arc::new(asof::AsofEventsFunction::new(Arc::clone(&env))),
    );
    ctx.register_udtf(
        "samples_asof",
        Arc::new(asof::SamplesAsofFunction::new(Arc::clone(&env))),
    );
    ctx.register_udtf("resample", Arc::new(resample::ResampleFunction::new(env)));
    ctx.register_udaf(AggregateUDF::from(BandPower::new()));
}
