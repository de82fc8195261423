//! Placeholder until the names module lands (replaced at merge).
pub fn validate_dataset(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty".into())
    } else {
        Ok(())
    }
}
pub fn validate_snapshot(name: &str) -> Result<(), String> {
    if name.contains('@') {
        Ok(())
    } else {
        Err("is not DATASET@SNAPSHOT".into())
    }
}
pub fn validate_volume_name(parent: &str, name: &str) -> Result<(), String> {
    validate_dataset(&format!("{parent}/{name}"))
}
