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

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::Result;
use datafusion::logical_expr::{AggregateUDF, Expr};
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;

pub use band::{BandPower, welch_band_power};
pub use exec::{FunctionExec, FunctionTable};
pub use signal::FunctionEnv;

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

/// A table function call: what rebuilds its plan on another node.
#[derive(Debug)]
pub struct FunctionCall {
    /// The registered name (`epochs`, `erp`, …).
    pub name: &'static str,
    /// Its arguments, values bound.
    pub args: Vec<Expr>,
    pub env: Arc<FunctionEnv>,
}

/// A table function that records each call in the table it returns.
#[derive(Debug)]
struct Recorded {
    name: &'static str,
    inner: Arc<dyn TableFunctionImpl>,
    env: Arc<FunctionEnv>,
}

impl TableFunctionImpl for Recorded {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let provider = self.inner.call_with_args(args)?;
        let Some(t) = (provider.as_ref() as &dyn std::any::Any).downcast_ref::<FunctionTable>()
        else {
            return Ok(provider);
        };
        if t.call.is_some() {
            return Ok(provider);
        }
        let unbound = exprs.iter().any(|e| {
            e.exists(|x| Ok(matches!(x, Expr::Placeholder(_))))
                .unwrap_or(false)
        });
        Ok(Arc::new(FunctionTable {
            name: t.name,
            schema: Arc::clone(&t.schema),
            plan: Arc::clone(&t.plan),
            call: (!unbound).then(|| {
                Arc::new(FunctionCall {
                    name: self.name,
                    args: exprs.to_vec(),
                    env: Arc::clone(&self.env),
                })
            }),
        }))
    }
}

/// The table function `name` over `env`, if there is one.
pub fn table_function(name: &str, env: &Arc<FunctionEnv>) -> Option<Arc<dyn TableFunctionImpl>> {
    let env = Arc::clone(env);
    let (name, inner): (&'static str, Arc<dyn TableFunctionImpl>) = match name {
        "epochs" => (
            "epochs",
            Arc::new(epochs::EpochsFunction::new(
                Arc::clone(&env),
                epochs::Mode::Rows,
            )),
        ),
        "erp" => (
            "erp",
            Arc::new(epochs::EpochsFunction::new(
                Arc::clone(&env),
                epochs::Mode::Average,
            )),
        ),
        "epoch_band_power" => (
            "epoch_band_power",
            Arc::new(band::EpochBandPowerFunction::new(Arc::clone(&env))),
        ),
        "asof_events" => (
            "asof_events",
            Arc::new(asof::AsofEventsFunction::new(Arc::clone(&env))),
        ),
        "samples_asof" => (
            "samples_asof",
            Arc::new(asof::SamplesAsofFunction::new(Arc::clone(&env))),
        ),
        "resample" => (
            "resample",
            Arc::new(resample::ResampleFunction::new(Arc::clone(&env))),
        ),
        _ => return None,
    };
    Some(Arc::new(Recorded { name, inner, env }))
}

/// The aggregate functions of this module.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![Arc::new(AggregateUDF::from(BandPower::new()))]
}

/// Registers every fusion function on `ctx`, bound to one tenant's view.
pub fn register(ctx: &SessionContext, view: &Arc<QueryView>, store: &Arc<dyn ObjectStore>) {
    let env = Arc::new(FunctionEnv {
        view: Arc::clone(view),
        store: Arc::clone(store),
    });
    for name in TABLE_FUNCTIONS {
        if let Some(f) = table_function(name, &env) {
            ctx.register_udtf(name, f);
        }
    }
    for f in aggregate_functions() {
        ctx.register_udaf(f.as_ref().clone());
    }
}
