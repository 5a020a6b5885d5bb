#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| connectors::fuzz::binlog_row(data));
