//! Helpers for silver's unit tests.

use crate::config::TableSpec;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use std::sync::Arc;

pub(super) fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

pub(super) fn spec(name: &str) -> TableSpec {
    crate::config::Pipeline::parse(crate::config::DEFAULT_PIPELINE, "p")
        .unwrap()
        .select(&[name.to_string()])
        .unwrap()
        .remove(0)
}
