//! Declarative studies: a TOML file with shared defaults and groups of runs, where a run may list
//! several values for one parameter to expand into one run per value. [`runner`] trains them
//! (reusing runs already completed with the same recipe) and writes the report.
//!
//! ```toml
//! title = "Activation functions"
//! [defaults]              # applied to every run; same keys as a training config
//! epochs = 50
//! [[group]]
//! name = "activations"
//! [[group.run]]
//! name = "mlp"
//! activation = ["elu", "relu", "selu", "tanh", "sigmoid"]   # five runs: mlp-elu, mlp-relu, ...
//! ```
//!
//! Keys are those of a training configuration (`epochs`, `[model]`, `optimizer.lr`, ...), plus the
//! short names of the command-line flags (`activation`, `hidden`, `dropout`, `lr`, ...), `preset`
//! (the configuration to start from) and, in a run, `name`.

pub mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use crate::error::{Error, Result};
use crate::training::TrainConfig;

/// A parsed, expanded study.
#[derive(Debug, Clone)]
pub struct Study {
    pub title: String,
    pub description: String,
    pub groups: Vec<Group>,
    /// The study file.
    pub source: PathBuf,
}

/// A group of runs compared together (one table and one figure in the report).
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub title: String,
    pub description: String,
    pub runs: Vec<PlannedRun>,
}

/// One fully resolved run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub name: String,
    /// The parameter this run varies and its value, when it came from a list.
    pub varied: Option<(String, String)>,
    /// Every setting the study gave this run, as `key = value` (for the report's tables).
    pub settings: Vec<(String, String)>,
    pub config: TrainConfig,
}

impl Study {
    /// Total epochs over all runs (for progress estimates).
    pub fn total_epochs(&self) -> usize {
        self.runs().map(|r| r.config.epochs).sum()
    }

    /// Every run, group by group.
    pub fn runs(&self) -> impl Iterator<Item = &PlannedRun> {
        self.groups.iter().flat_map(|g| g.runs.iter())
    }

    /// Reads and expands a study file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsio::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and expands study text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let file: StudyFile = toml::from_str(text)
            .map_err(|e| crate::training::config::toml_error(&origin, text, &e))?;
        let ctx = Context {
            origin: &origin,
            text,
        };
        if file.groups.is_empty() {
            return Err(Error::Config(format!(
                "{origin}: the study has no [[group]]: add at least one group with a [[group.run]]"
            )));
        }
        let mut groups = Vec::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for g in &file.groups {
            if g.runs.is_empty() {
                return Err(Error::Config(format!(
                    "{origin}: group {:?} has no [[group.run]]",
                    g.name
                )));
            }
            let mut runs = Vec::new();
            for run in &g.runs {
                for planned in ctx.expand(&g.name, &[&file.defaults, &g.defaults, run])? {
                    if let Some(other) = names.insert(planned.name.clone(), g.name.clone()) {
                        return Err(Error::Config(format!(
                            "{origin}: two runs are named {:?} (groups {other:?} and {:?}); give them different `name`s",
                            planned.name, g.name
                        )));
                    }
                    runs.push(planned);
                }
            }
            groups.push(Group {
                name: g.name.clone(),
                title: if g.title.is_empty() {
                    g.name.clone()
                } else {
                    g.title.clone()
                },
                description: g.description.clone(),
                runs,
            });
        }
        Ok(Study {
            title: if file.title.is_empty() {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                file.title
            },
            description: file.description,
            groups,
            source: path.to_path_buf(),
        })
    }
}

/// Settings as written: keys and values with their positions in the file.
type Settings = BTreeMap<Spanned<String>, Spanned<Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: Settings,
    #[serde(default, rename = "group")]
    groups: Vec<GroupFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: Settings,
    #[serde(default, rename = "run")]
    runs: Vec<Settings>,
}

/// Short names accepted for configuration keys (the command-line flags' names).
const ALIASES: [(&str, &str); 20] = [
    ("arch", "model.arch"),
    ("hidden", "model.hidden"),
    ("activation", "model.activation"),
    ("dropout", "model.dropout"),
    ("batch_norm", "model.batch_norm"),
    ("lr", "optimizer.lr"),
    ("momentum", "optimizer.momentum"),
    ("nesterov", "optimizer.nesterov"),
    ("weight_decay", "optimizer.weight_decay"),
    ("hold_epochs", "schedule.hold_epochs"),
    ("factor", "schedule.factor"),
    ("val_split", "data.val_split"),
    ("normalization", "data.normalization"),
    ("flip", "data.flip"),
    ("translate", "data.translate"),
    ("patience", "early_stopping.patience"),
    ("min_delta", "early_stopping.min_delta"),
    ("restore_best", "early_stopping.restore_best"),
    ("optimizer", "optimizer.name"),
    ("schedule", "schedule.name"),
];

struct Context<'a> {
    origin: &'a str,
    text: &'a str,
}

/// One setting to apply: a dotted path and a value, with the position of its key.
struct Leaf {
    path: Vec<String>,
    value: Value,
    span: std::ops::Range<usize>,
}

impl Context<'_> {
    fn at(&self, span: &std::ops::Range<usize>) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{column}", self.origin)
    }

    fn error(&self, span: &std::ops::Range<usize>, message: String) -> Error {
        Error::Config(format!("{}: {message}", self.at(span)))
    }

    /// Resolves one `[[group.run]]` (with the defaults above it) into one or more runs.
    fn expand(&self, group: &str, layers: &[&Settings]) -> Result<Vec<PlannedRun>> {
        let run = layers[layers.len() - 1];
        let special = |key: &str| -> Option<&Spanned<Value>> {
            layers
                .iter()
                .rev()
                .find_map(|l| l.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v))
        };
        let base = match special("preset") {
            Some(v) => match v.get_ref().as_str() {
                Some(name) => {
                    TrainConfig::preset(name).map_err(|e| self.error(&v.span(), e.to_string()))?
                }
                None => return Err(self.error(&v.span(), "`preset` must be a string".into())),
            },
            None => TrainConfig::default(),
        };
        let mut table = Table::try_from(&base).expect("a TrainConfig serialises to a table");
        let mut settings = Vec::new();
        let mut expansion: Option<Leaf> = None;
        for (depth, layer) in layers.iter().enumerate() {
            let is_run = depth == layers.len() - 1;
            for leaf in self.leaves(layer, &table)? {
                let target = lookup(&table, &leaf.path).expect("leaves only yields known paths");
                let listed = match (target, &leaf.value) {
                    (Value::Array(_), Value::Array(items)) => {
                        items.first().is_some_and(Value::is_array)
                    }
                    (_, Value::Array(_)) => true,
                    _ => false,
                };
                let key = leaf.path.join(".");
                if listed {
                    if !is_run {
                        return Err(self.error(
                            &leaf.span,
                            format!("`{key}`: a list of values to compare belongs in a [[group.run]], not in defaults"),
                        ));
                    }
                    if let Some(previous) = &expansion {
                        return Err(self.error(
                            &leaf.span,
                            format!(
                                "`{key}`: a run may list values for one parameter only (it already lists `{}`)",
                                previous.path.join(".")
                            ),
                        ));
                    }
                    if leaf.value.as_array().is_some_and(Vec::is_empty) {
                        return Err(
                            self.error(&leaf.span, format!("`{key}`: the list of values is empty"))
                        );
                    }
                    expansion = Some(leaf);
                    continue;
                }
                self.set(&mut table, &leaf)?;
                if is_run {
                    settings.retain(|(k, _): &(String, String)| *k != key);
                    settings.push((key, display_value(&leaf.value)));
                }
            }
        }
        if let Some((_, v)) = run.iter().find(|(k, _)| k.get_ref() == "preset") {
            settings.insert(0, ("preset".to_string(), display_value(v.get_ref())));
        }
        let name = match run.iter().find(|(k, _)| k.get_ref() == "name") {
            Some((_, v)) => v
                .get_ref()
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.error(&v.span(), "`name` must be a string".into()))?,
            None => group.to_string(),
        };
        let finish = |table: &Table,
                      name: String,
                      varied: Option<(String, String)>,
                      span: &std::ops::Range<usize>| {
            let config: TrainConfig =
                Value::Table(table.clone())
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        self.error(span, format!("run {name:?}: {}", e.message().trim()))
                    })?;
            config
                .validate()
                .map_err(|e| self.error(span, format!("run {name:?}: {e}")))?;
            let mut settings = settings.clone();
            if let Some((k, v)) = &varied {
                settings.push((k.clone(), v.clone()));
            }
            Ok::<_, Error>(PlannedRun {
                name,
                varied,
                settings,
                config,
            })
        };
        let Some(list) = expansion else {
            let span = run.keys().next().map(|k| k.span()).unwrap_or(0..0);
            return Ok(vec![finish(&table, name, None, &span)?]);
        };
        let key = list.path.join(".");
        let items = list.value.as_array().cloned().unwrap_or_default();
        let mut runs = Vec::new();
        for item in items {
            let leaf = Leaf {
                path: list.path.clone(),
                value: item.clone(),
                span: list.span.clone(),
            };
            let mut table = table.clone();
            self.set(&mut table, &leaf)?;
            let shown = display_value(&item);
            let run_name = format!("{name}-{}", shown.replace([' ', ',', '[', ']', '"'], ""));
            runs.push(finish(
                &table,
                run_name,
                Some((key.clone(), shown)),
                &list.span,
            )?);
        }
        Ok(runs)
    }

    /// Flattens a layer of settings into leaves with full paths, resolving short names.
    fn leaves(&self, layer: &Settings, table: &Table) -> Result<Vec<Leaf>> {
        let mut out = Vec::new();
        for (key, value) in layer {
            let name = key.get_ref().as_str();
            if name == "name" || name == "preset" {
                continue;
            }
            let path: Vec<String> = match ALIASES.iter().find(|(short, _)| *short == name) {
                // `optimizer` and `schedule` are aliases only when given a string.
                Some((_, long)) if !value.get_ref().is_table() => {
                    long.split('.').map(str::to_string).collect()
                }
                _ => vec![name.to_string()],
            };
            self.flatten(path, value.get_ref(), key.span(), table, &mut out)?;
        }
        Ok(out)
    }

    fn flatten(
        &self,
        path: Vec<String>,
        value: &Value,
        span: std::ops::Range<usize>,
        table: &Table,
        out: &mut Vec<Leaf>,
    ) -> Result<()> {
        let key = path.join(".");
        let target = lookup(table, &path)
            .ok_or_else(|| self.error(&span, format!("unknown key `{key}`")))?;
        match (target, value) {
            (Value::Table(_), Value::Table(inner)) => {
                for (k, v) in inner {
                    let mut p = path.clone();
                    p.push(k.clone());
                    self.flatten(p, v, span.clone(), table, out)?;
                }
                Ok(())
            }
            (Value::Table(_), _) => Err(self.error(&span, format!("`{key}` must be a table"))),
            _ => {
                out.push(Leaf {
                    path,
                    value: value.clone(),
                    span,
                });
                Ok(())
            }
        }
    }

    /// Sets one leaf, checking its type against the configuration.
    fn set(&self, table: &mut Table, leaf: &Leaf) -> Result<()> {
        let key = leaf.path.join(".");
        let target = lookup(table, &leaf.path).expect("known path");
        let value = match (target, &leaf.value) {
            (Value::Float(_), Value::Integer(i)) => Value::Float(*i as f64),
            (t, v) if t.type_str() == v.type_str() => v.clone(),
            (t, v) => {
                return Err(self.error(
                    &leaf.span,
                    format!(
                        "`{key}` must be {}, not {}",
                        article(t.type_str()),
                        article(v.type_str())
                    ),
                ));
            }
        };
        let (last, parents) = leaf.path.split_last().expect("non-empty path");
        let mut node = &mut *table;
        for p in parents {
            node = node
                .get_mut(p)
                .and_then(Value::as_table_mut)
                .expect("known path");
        }
        node.insert(last.clone(), value);
        // Enumerations and nested types are checked by deserialising the whole configuration.
        let check: std::result::Result<TrainConfig, _> = Value::Table(table.clone()).try_into();
        check.map(|_| ()).map_err(|e: toml::de::Error| {
            self.error(&leaf.span, format!("`{key}`: {}", e.message().trim()))
        })
    }
}

fn lookup<'t>(table: &'t Table, path: &[String]) -> Option<&'t Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(first)?;
    for p in rest {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" => "an integer".into(),
        "array" => "an array".into(),
        other => format!("a {other}"),
    }
}

/// A value as written in a report: strings bare, arrays joined.
pub fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(display_value)
            .collect::<Vec<_>>()
            .join("-"),
        other => other.to_string(),
    }
}
