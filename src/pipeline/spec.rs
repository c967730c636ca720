//! What a run is: its command and everything its requests need, defined
//! once. Stored verbatim (JSON) in `runs.options` when the run starts, and
//! read back by `orderbatch retry`, `serve` and `inbox`, so a retried or
//! served run sends what it was started with.

use serde::{Deserialize, Serialize};

use super::Mode;
use crate::input::ColumnOptions;
use crate::provider::commerce_engine::PaymentMethod;

/// A run's command and the settings its requests carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Which command: its input, checks and chain.
    pub mode: Mode,
    /// Parameters added to every `get_smart_token` call.
    #[serde(default)]
    pub token_options: Vec<(String, String)>,
    /// Default `payment_method` of Commerce Engine retries.
    #[serde(default)]
    pub payment_defaults: PaymentMethod,
    /// Pass-through and unknown columns.
    #[serde(default)]
    pub columns: ColumnOptions,
    /// The pace the run was started with (requests per second; `None`:
    /// unlimited), for the record: a resumed run takes the pace it is given.
    #[serde(default)]
    pub rate: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl RunSpec {
    /// A run of `mode` with nothing else set.
    pub fn new(mode: Mode) -> RunSpec {
        RunSpec {
            mode,
            token_options: Vec::new(),
            payment_defaults: PaymentMethod::default(),
            columns: ColumnOptions::default(),
            rate: None,
            concurrency: None,
            max_attempts: None,
        }
    }

    /// The text `runs.options` holds.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a run spec is plain data")
    }

    /// Reads what `runs.options` holds (runs of every earlier version of
    /// this store included).
    pub fn from_stored(options: &str) -> Result<RunSpec, serde_json::Error> {
        serde_json::from_str(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_spec_reads_back_equal_and_older_ones_still_read() {
        let mut spec = RunSpec::new(Mode::Refresh {
            force: true,
            urls: true,
            tokens: false,
        });
        spec.token_options = vec![("flow_debit".into(), "true".into())];
        spec.rate = Some(20);
        assert_eq!(RunSpec::from_stored(&spec.to_stored()).unwrap(), spec);
        // What round two wrote (a hand-written object with these keys).
        let old = r#"{"mode":"Change","token_options":[],"rate":null,"concurrency":8,
                      "max_attempts":8,"columns":{"pass_through":[],"allow_unknown":false},
                      "payment_defaults":{}}"#;
        let read = RunSpec::from_stored(old);
        assert!(read.is_ok(), "{read:?}");
        assert_eq!(read.unwrap().mode, Mode::Change);
    }
}
