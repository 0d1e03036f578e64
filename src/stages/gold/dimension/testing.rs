//! Helpers for the dimension's unit tests.

use crate::config::TableSpec;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

pub(super) fn users() -> (TableSpec, Schema) {
    let pipeline = crate::config::Pipeline::parse(crate::config::DEFAULT_PIPELINE, "p").unwrap();
    let table = pipeline.select(&["DimUser".to_string()]).unwrap().remove(0);
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("user_id", DataType::Int32, true),
        Field::new("user_name", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("updated_at", ts, true),
        Field::new("_source_file", DataType::Utf8, true),
        Field::new("_ingested_at", DataType::Utf8, true),
    ]);
    (table, schema)
}
