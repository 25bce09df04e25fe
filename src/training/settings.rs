//! Settings by name: one table maps the command line's flags and a study file's short keys to
//! configuration keys, and [`set`] writes a value into a configuration's TOML table the same way
//! for both, checking its type against the key's.

use toml::{Table, Value};

/// Short name -> dotted configuration key. The flag is the short name with `-` for `_`
/// (`--weight-decay`); a study file may write the short name or the full key. `model`,
/// `optimizer` and `schedule` are short names only when given a string (`[model]` is the
/// table); `arch` is the study files' older name for `model`.
pub const SHORT_NAMES: [(&str, &str); 26] = [
    ("model", "model.arch"),
    ("arch", "model.arch"),
    ("hidden", "model.hidden"),
    ("activation", "model.activation"),
    ("dropout", "model.dropout"),
    ("batch_norm", "model.batch_norm"),
    ("whiten", "model.whiten"),
    ("optimizer", "optimizer.name"),
    ("lr", "optimizer.lr"),
    ("momentum", "optimizer.momentum"),
    ("nesterov", "optimizer.nesterov"),
    ("weight_decay", "optimizer.weight_decay"),
    ("schedule", "schedule.name"),
    ("hold_epochs", "schedule.hold_epochs"),
    ("factor", "schedule.factor"),
    ("val_split", "data.val_split"),
    ("normalization", "data.normalization"),
    ("flip", "data.flip"),
    ("translate", "data.translate"),
    ("mixup", "data.mixup"),
    ("cutmix", "data.cutmix"),
    ("progressive", "data.progressive"),
    ("patience", "early_stopping.patience"),
    ("min_delta", "early_stopping.min_delta"),
    ("restore_best", "early_stopping.restore_best"),
    ("teacher", "distill.teacher"),
];

/// The key path that `name`, written with `value`, sets: its full key when it is a short name
/// (and `value` is not a table), else `name` itself.
pub fn key_path(name: &str, value: &Value) -> Vec<String> {
    let key = match SHORT_NAMES.iter().find(|(short, _)| *short == name) {
        Some((_, key)) if !value.is_table() => key,
        _ => name,
    };
    key.split('.').map(str::to_string).collect()
}

/// The value at `path` in `table`.
pub fn lookup<'t>(table: &'t Table, path: &[String]) -> Option<&'t Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(first)?;
    for p in rest {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

/// Sets the existing key `path` of `table` to `value`, which must have the key's type (an
/// integer is taken for a float). Enumerations and ranges are left to deserialising and
/// validating the whole configuration. The error names the key.
pub fn set(table: &mut Table, path: &[String], value: &Value) -> Result<(), String> {
    let key = path.join(".");
    let target = lookup(table, path).ok_or_else(|| format!("unknown key `{key}`"))?;
    let value = match (target, value) {
        (Value::Float(_), Value::Integer(i)) => Value::Float(*i as f64),
        (Value::Table(_), _) => return Err(format!("`{key}` must be a table")),
        (t, v) if t.type_str() == v.type_str() => v.clone(),
        (t, v) => {
            return Err(format!(
                "`{key}` must be {}, not {}",
                article(t.type_str()),
                article(v.type_str())
            ));
        }
    };
    let (last, parents) = path.split_last().ok_or("an empty key")?;
    let mut node = table;
    for p in parents {
        node = node
            .get_mut(p)
            .and_then(Value::as_table_mut)
            .ok_or_else(|| format!("unknown key `{key}`"))?;
    }
    node.insert(last.clone(), value);
    Ok(())
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" => "an integer".into(),
        "array" => "an array".into(),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_and_types_are_checked() {
        let text = "epochs = 3\n[model]\narch = \"mlp\"\nhidden = [60]\n[optimizer]\nlr = 0.1\n";
        let mut table: Table = text.parse().expect("valid TOML");
        let lr = key_path("lr", &Value::Integer(1));
        assert_eq!(lr, ["optimizer", "lr"]);
        set(&mut table, &lr, &Value::Integer(1)).expect("an integer is taken for a float");
        assert_eq!(lookup(&table, &lr), Some(&Value::Float(1.0)));
        let model = Value::String("cnn".into());
        assert_eq!(key_path("model", &model), ["model", "arch"]);
        assert_eq!(key_path("model", &Value::Table(Table::new())), ["model"]);
        let err = set(&mut table, &key_path("epochs", &model), &model);
        assert_eq!(err, Err("`epochs` must be an integer, not a string".into()));
        let unknown = set(&mut table, &key_path("model.width", &model), &model);
        assert_eq!(unknown, Err("unknown key `model.width`".into()));
    }
}
