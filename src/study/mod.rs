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

pub mod claims;
pub mod runner;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use crate::error::{Error, Result};
use crate::training::TrainConfig;
use crate::training::settings::{self, lookup};

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
    /// A published result to compare the group with ("84.2%, logistic regression, Xiao et al.
    /// 2017"), shown beside it in the report's summary.
    pub reference: String,
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

/// For each of `runs`, the position in `runs` of the run that teaches it: the run that its
/// `distill.teacher` names by run name. `None` without a teacher, or when the teacher is a
/// directory. One index of the names, so a study of thousands of runs is resolved in one pass.
pub fn teacher_positions(runs: &[&PlannedRun]) -> Vec<Option<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        index.entry(run.name.as_str()).or_insert(i);
    }
    runs.iter()
        .map(|r| match r.config.distill.teacher.as_str() {
            "" => None,
            teacher => index.get(teacher).copied(),
        })
        .collect()
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

    /// Keeps the groups `names` lists and, from the others, only the runs that teach a kept run
    /// (directly or through another teacher), so that a student always has its teacher.
    pub fn keep_groups(&mut self, names: &[String]) {
        let mut kept: Vec<bool> = self
            .groups
            .iter()
            .flat_map(|g| g.runs.iter().map(|_| names.contains(&g.name)))
            .collect();
        let teachers = teacher_positions(&self.runs().collect::<Vec<_>>());
        let mut students: Vec<usize> = (0..kept.len()).filter(|&i| kept[i]).collect();
        while let Some(student) = students.pop() {
            if let Some(teacher) = teachers[student]
                && !kept[teacher]
            {
                kept[teacher] = true;
                students.push(teacher);
            }
        }
        // `retain` visits the runs in order, the order `kept` was built in.
        let mut keep = kept.into_iter();
        for group in &mut self.groups {
            group.runs.retain(|_| keep.next().unwrap_or(false));
        }
        self.groups.retain(|g| !g.runs.is_empty());
    }

    /// Reads and expands a study file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsio::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and expands study text; `path` names it in errors. Every run is resolved and
    /// checked here, before anything trains, and every problem found is reported together.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let file: StudyFile = toml::from_str(text)
            .map_err(|e| crate::training::config::toml_error(&origin, text, &e))?;
        if file.groups.is_empty() {
            return Err(Error::Config(format!(
                "{origin}: the study has no [[group]]: add at least one group with a [[group.run]]"
            )));
        }
        let ctx = Context {
            origin: &origin,
            text,
        };
        let mut problems = Vec::new();
        let groups = ctx.groups(&file, &mut problems);
        check_teachers(&origin, &groups, &mut problems);
        if !problems.is_empty() {
            return Err(Error::Config(problem_list(problems)));
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

/// Checks every run's `distill.teacher`: another run of the study (named by its run name; it
/// is trained first, see [`runner`]) or the directory of a finished run; not the run itself,
/// not a run whose recipe an earlier run already trains, and no cycle of teachers.
fn check_teachers(origin: &str, groups: &[Group], problems: &mut Vec<String>) {
    let runs: Vec<&PlannedRun> = groups.iter().flat_map(|g| g.runs.iter()).collect();
    let teachers = teacher_positions(&runs);
    for (i, run) in runs.iter().enumerate() {
        let teacher = &run.config.distill.teacher;
        if teacher.is_empty() {
            continue;
        }
        let problem = match teachers[i] {
            Some(t) if t == i => {
                "names the run itself: a student learns from another run".to_string()
            }
            Some(t) => match runs[..t]
                .iter()
                .find(|r| r.config.recipe() == runs[t].config.recipe())
            {
                Some(first) => format!(
                    "= {teacher:?}: that run has the recipe of the earlier run {:?}, which trains it for both: name that one",
                    first.name
                ),
                None => continue,
            },
            None if run.config.distill.finished_teacher(Path::new("")).is_ok() => continue,
            None => format!(
                "= {teacher:?} names neither a run of this study nor a finished run's directory \
                 (relative to the working directory)"
            ),
        };
        problems.push(format!(
            "{origin}: run {:?}: distill.teacher {problem}",
            run.name
        ));
    }
    check_cycles(origin, &runs, &teachers, problems);
}

/// Refuses each cycle of two or more teachers once, named from its first run (a run that
/// teaches itself is refused by [`check_teachers`]). A run has at most one teacher, so following
/// the teachers from a run not yet seen ends at no teacher, at a run seen from an earlier start
/// (its chain is checked), or at a run of this path: a cycle.
fn check_cycles(
    origin: &str,
    runs: &[&PlannedRun],
    teachers: &[Option<usize>],
    problems: &mut Vec<String>,
) {
    let mut seen = vec![false; runs.len()];
    for start in 0..runs.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at.filter(|&i| !seen[i]) {
            seen[i] = true;
            path.push(i);
            at = teachers[i];
        }
        let Some(from) = at.and_then(|end| path.iter().position(|&k| k == end)) else {
            continue;
        };
        let mut cycle = path.split_off(from);
        if cycle.len() < 2 {
            continue;
        }
        let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
        cycle.rotate_left(first);
        let names: Vec<&str> = cycle.iter().map(|&k| runs[k].name.as_str()).collect();
        problems.push(format!(
            "{origin}: run {:?}: its teachers form a cycle ({}); a teacher must be trained without its student",
            names[0],
            names.join(" -> ")
        ));
    }
}

/// One problem as it is, or all of them under a line that counts them.
fn problem_list(problems: Vec<String>) -> String {
    if problems.len() == 1 {
        return problems.into_iter().next().unwrap_or_default();
    }
    let mut out = format!(
        "the study has {} problems (nothing was trained); fix them and run again:",
        problems.len()
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p);
    }
    out
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
    reference: String,
    #[serde(default)]
    defaults: Settings,
    #[serde(default, rename = "run")]
    runs: Vec<Settings>,
}

struct Context<'a> {
    origin: &'a str,
    text: &'a str,
}

/// A run's settings applied to its configuration table.
struct Applied {
    table: Table,
    /// The run's own settings as `key = value`, for the report.
    settings: Vec<(String, String)>,
    /// The one parameter the run lists values for, if any.
    expansion: Option<Leaf>,
}

/// One setting to apply: a dotted path and a value, with the position of its key.
struct Leaf {
    path: Vec<String>,
    value: Value,
    span: std::ops::Range<usize>,
}

impl Context<'_> {
    fn error(&self, span: &std::ops::Range<usize>, message: String) -> Error {
        let at = crate::training::config::file_position(self.origin, self.text, span.start);
        Error::Config(format!("{at}: {message}"))
    }

    /// Resolves every group and run of `file`, adding what is wrong to `problems`.
    fn groups(&self, file: &StudyFile, problems: &mut Vec<String>) -> Vec<Group> {
        let origin = self.origin;
        let mut groups = Vec::new();
        let mut run_names: BTreeMap<String, String> = BTreeMap::new();
        let mut group_names = BTreeSet::new();
        for g in &file.groups {
            if let Err(e) = crate::fsio::check_plain_name("group name", &g.name) {
                problems.push(format!("{origin}: {e}"));
            }
            if !group_names.insert(g.name.as_str()) {
                problems.push(format!(
                    "{origin}: two groups are named {:?}; give them different `name`s",
                    g.name
                ));
            }
            if g.runs.is_empty() {
                problems.push(format!("{origin}: group {:?} has no [[group.run]]", g.name));
            }
            let mut runs = Vec::new();
            for run in &g.runs {
                for planned in self.expand(&g.name, &[&file.defaults, &g.defaults, run]) {
                    match planned {
                        Err(e) => problems.push(e.to_string()),
                        Ok(planned) => {
                            if let Some(other) =
                                run_names.insert(planned.name.clone(), g.name.clone())
                            {
                                problems.push(format!(
                                    "{origin}: two runs are named {:?} (groups {other:?} and {:?}); give them different `name`s",
                                    planned.name, g.name
                                ));
                            }
                            runs.push(planned);
                        }
                    }
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
                reference: g.reference.clone(),
                runs,
            });
        }
        groups
    }

    /// Resolves one `[[group.run]]` (with the defaults above it) into one run, or one per value
    /// of the parameter it lists; each is checked on its own.
    fn expand(&self, group: &str, layers: &[&Settings]) -> Vec<Result<PlannedRun>> {
        let run = layers[layers.len() - 1];
        let resolved = self.base_table(layers).and_then(|table| {
            let name = self.run_name(run, group)?;
            Ok((name, self.apply_layers(layers, table)?))
        });
        let (
            name,
            Applied {
                table,
                settings,
                expansion,
            },
        ) = match resolved {
            Ok(parts) => parts,
            Err(e) => return vec![Err(e)],
        };
        let Some(list) = expansion else {
            let span = run.keys().next().map(|k| k.span()).unwrap_or(0..0);
            return vec![self.finish(&table, name, &settings, None, &span)];
        };
        let key = list.path.join(".");
        let items = list.value.as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .map(|item| {
                let leaf = Leaf {
                    path: list.path.clone(),
                    value: item,
                    span: list.span.clone(),
                };
                let mut table = table.clone();
                self.set(&mut table, &leaf)?;
                let shown = display_value(&leaf.value);
                let run_name = format!("{name}-{}", shown.replace([' ', ',', '[', ']', '"'], ""));
                let varied = Some((key.clone(), shown));
                self.finish(&table, run_name, &settings, varied, &list.span)
            })
            .collect()
    }

    /// The configuration a run starts from: its `preset` (the nearest layer's), or the default.
    fn base_table(&self, layers: &[&Settings]) -> Result<Table> {
        let preset = layers.iter().rev().find_map(|l| {
            l.iter()
                .find(|(k, _)| k.get_ref() == "preset")
                .map(|(_, v)| v)
        });
        let base = match preset {
            Some(v) => match v.get_ref().as_str() {
                Some(name) => {
                    TrainConfig::preset(name).map_err(|e| self.error(&v.span(), e.to_string()))?
                }
                None => return Err(self.error(&v.span(), "`preset` must be a string".into())),
            },
            None => TrainConfig::default(),
        };
        Ok(base.to_table())
    }

    /// The run's `name`, or its group's.
    fn run_name(&self, run: &Settings, group: &str) -> Result<String> {
        match run.iter().find(|(k, _)| k.get_ref() == "name") {
            Some((_, v)) => v
                .get_ref()
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.error(&v.span(), "`name` must be a string".into())),
            None => Ok(group.to_string()),
        }
    }

    /// Applies the layers' settings to `table`, outermost first. Returns the table, the run's own
    /// settings as `key = value` (for the report) and the one parameter it lists, if any.
    fn apply_layers(&self, layers: &[&Settings], mut table: Table) -> Result<Applied> {
        let mut settings: Vec<(String, String)> = Vec::new();
        let mut expansion: Option<Leaf> = None;
        for (depth, layer) in layers.iter().enumerate() {
            let is_run = depth == layers.len() - 1;
            for leaf in self.leaves(layer, &table)? {
                let key = leaf.path.join(".");
                if self.is_list(&table, &leaf) {
                    self.check_list(&leaf, is_run, expansion.as_ref())?;
                    expansion = Some(leaf);
                    continue;
                }
                self.set(&mut table, &leaf)?;
                if is_run {
                    settings.retain(|(k, _)| *k != key);
                    settings.push((key, display_value(&leaf.value)));
                }
            }
        }
        let run = layers[layers.len() - 1];
        if let Some((_, v)) = run.iter().find(|(k, _)| k.get_ref() == "preset") {
            settings.insert(0, ("preset".to_string(), display_value(v.get_ref())));
        }
        Ok(Applied {
            table,
            settings,
            expansion,
        })
    }

    /// Whether `leaf` lists values to compare rather than giving one (an array where the
    /// configuration holds a scalar, or an array of arrays where it holds an array).
    fn is_list(&self, table: &Table, leaf: &Leaf) -> bool {
        let target = lookup(table, &leaf.path).expect("leaves only yields known paths");
        match (target, &leaf.value) {
            (Value::Array(_), Value::Array(items)) => items.first().is_some_and(Value::is_array),
            (_, Value::Array(_)) => true,
            _ => false,
        }
    }

    /// A list of values belongs in a run, one per run, and is not empty.
    fn check_list(&self, leaf: &Leaf, is_run: bool, previous: Option<&Leaf>) -> Result<()> {
        let key = leaf.path.join(".");
        if !is_run {
            return Err(self.error(
                &leaf.span,
                format!("`{key}`: a list of values to compare belongs in a [[group.run]], not in defaults"),
            ));
        }
        if let Some(previous) = previous {
            return Err(self.error(
                &leaf.span,
                format!(
                    "`{key}`: a run may list values for one parameter only (it already lists `{}`)",
                    previous.path.join(".")
                ),
            ));
        }
        if leaf.value.as_array().is_some_and(Vec::is_empty) {
            return Err(self.error(&leaf.span, format!("`{key}`: the list of values is empty")));
        }
        Ok(())
    }

    /// The planned run: its configuration deserialised and validated, its name checked.
    fn finish(
        &self,
        table: &Table,
        name: String,
        settings: &[(String, String)],
        varied: Option<(String, String)>,
        span: &std::ops::Range<usize>,
    ) -> Result<PlannedRun> {
        crate::fsio::check_plain_name("run name", &name).map_err(|e| self.error(span, e))?;
        let config: TrainConfig =
            Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    self.error(span, format!("run {name:?}: {}", e.message().trim()))
                })?;
        config
            .validate()
            .map_err(|e| self.error(span, format!("run {name:?}: {e}")))?;
        let mut settings = settings.to_vec();
        if let Some((k, v)) = &varied {
            settings.push((k.clone(), v.clone()));
        }
        Ok(PlannedRun {
            name,
            varied,
            settings,
            config,
        })
    }

    /// Flattens a layer of settings into leaves with full paths, resolving short names.
    fn leaves(&self, layer: &Settings, table: &Table) -> Result<Vec<Leaf>> {
        let mut out = Vec::new();
        for (key, value) in layer {
            let name = key.get_ref().as_str();
            if name == "name" || name == "preset" {
                continue;
            }
            let path = settings::key_path(name, value.get_ref());
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
        settings::set(table, &leaf.path, &leaf.value).map_err(|e| self.error(&leaf.span, e))?;
        // Enumerations and nested types are checked by deserialising the whole configuration.
        let check: std::result::Result<TrainConfig, _> = Value::Table(table.clone()).try_into();
        check.map(|_| ()).map_err(|e: toml::de::Error| {
            let key = leaf.path.join(".");
            self.error(&leaf.span, format!("`{key}`: {}", e.message().trim()))
        })
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
