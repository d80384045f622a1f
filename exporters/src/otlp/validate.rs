//! Structural checks of an OTLP profiles request: what a receiver relies on. Used by the
//! tests, and usable on anything we send.

use super::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use super::proto::profiles::v1development as pb;

/// Checks that every index points into its table, that each table starts with its zero
/// value, and that every sample has one value. Returns the first problem found.
pub fn validate_profiles(req: &ExportProfilesServiceRequest) -> Result<(), String> {
    let d = req.dictionary.as_ref().ok_or("no dictionary")?;
    zero_first(&d.string_table, "string")?;
    zero_first(&d.mapping_table, "mapping")?;
    zero_first(&d.location_table, "location")?;
    zero_first(&d.function_table, "function")?;
    zero_first(&d.link_table, "link")?;
    zero_first(&d.attribute_table, "attribute")?;
    zero_first(&d.stack_table, "stack")?;

    let string = |i: i32, what: &str| check(i, d.string_table.len(), what);
    let attrs = |ix: &[i32], what: &str| {
        ix.iter()
            .try_for_each(|&i| check(i, d.attribute_table.len(), what))
    };
    for a in &d.attribute_table[1..] {
        string(a.key_strindex, "attribute key")?;
        string(a.unit_strindex, "attribute unit")?;
    }
    for f in &d.function_table[1..] {
        string(f.name_strindex, "function name")?;
        string(f.system_name_strindex, "function system name")?;
        string(f.filename_strindex, "function file")?;
    }
    for m in &d.mapping_table[1..] {
        string(m.filename_strindex, "mapping file")?;
        attrs(&m.attribute_indices, "mapping attribute")?;
    }
    for l in &d.location_table[1..] {
        check(l.mapping_index, d.mapping_table.len(), "location mapping")?;
        attrs(&l.attribute_indices, "location attribute")?;
        for line in &l.lines {
            check(line.function_index, d.function_table.len(), "line function")?;
        }
    }
    for s in &d.stack_table[1..] {
        for &i in &s.location_indices {
            if i == 0 {
                return Err("stack refers to the null location".into());
            }
            check(i, d.location_table.len(), "stack location")?;
        }
    }
    for rp in &req.resource_profiles {
        for sp in &rp.scope_profiles {
            for p in &sp.profiles {
                for vt in [p.sample_type, p.period_type].iter().flatten() {
                    string(vt.type_strindex, "value type")?;
                    string(vt.unit_strindex, "value unit")?;
                }
                attrs(&p.attribute_indices, "profile attribute")?;
                for s in &p.samples {
                    check(s.stack_index, d.stack_table.len(), "sample stack")?;
                    check(s.link_index, d.link_table.len(), "sample link")?;
                    attrs(&s.attribute_indices, "sample attribute")?;
                    if s.values.len() != 1 {
                        return Err(format!("sample with {} values", s.values.len()));
                    }
                }
            }
        }
    }
    Ok(())
}

fn check(i: i32, len: usize, what: &str) -> Result<(), String> {
    if i < 0 || i as usize >= len {
        Err(format!("{what} index {i} outside a table of {len}"))
    } else {
        Ok(())
    }
}

fn zero_first<T: Default + PartialEq>(table: &[T], what: &str) -> Result<(), String> {
    match table.first() {
        Some(first) if *first == T::default() => Ok(()),
        Some(_) => Err(format!("{what} table does not start with the zero value")),
        None => Err(format!("{what} table is empty")),
    }
}

/// Resolves a sample's stack to its function names, leaf first; for tests and debugging.
pub fn sample_functions(dict: &pb::ProfilesDictionary, sample: &pb::Sample) -> Vec<String> {
    let Some(stack) = dict.stack_table.get(sample.stack_index as usize) else {
        return Vec::new();
    };
    stack
        .location_indices
        .iter()
        .filter_map(|&l| dict.location_table.get(l as usize))
        .flat_map(|l| l.lines.iter())
        .filter_map(|line| dict.function_table.get(line.function_index as usize))
        .filter_map(|f| dict.string_table.get(f.name_strindex as usize).cloned())
        .collect()
}
