//! A Keras-style model summary: one row per layer with its output shape and parameter count.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

/// One layer of a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRow {
    /// Keras-style instance name (`dense`, `dense_1`, ...), set by [`Summary::push`].
    pub name: String,
    /// Layer type (`Dense`, `Flatten`, `Conv2D`, ...).
    pub kind: String,
    /// Output shape without the batch dimension.
    pub output: Vec<usize>,
    /// Trainable parameters.
    pub params: usize,
    /// Non-trainable parameters (batch-norm running statistics).
    pub non_trainable: usize,
    /// Activation or setting worth showing (`relu`, `rate 0.2`).
    pub note: String,
}

impl LayerRow {
    pub fn new(kind: &str, output: Vec<usize>, params: usize) -> Self {
        LayerRow {
            name: String::new(),
            kind: kind.to_string(),
            output,
            params,
            non_trainable: 0,
            note: String::new(),
        }
    }

    pub fn with_note(mut self, note: &str) -> Self {
        self.note = note.to_string();
        self
    }

    pub fn with_non_trainable(mut self, count: usize) -> Self {
        self.non_trainable = count;
        self
    }
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub model_name: String,
    pub layers: Vec<LayerRow>,
    #[serde(skip)]
    counters: HashMap<String, usize>,
}

impl Summary {
    pub fn new(model_name: &str) -> Self {
        Summary {
            model_name: model_name.to_string(),
            layers: Vec::new(),
            counters: HashMap::new(),
        }
    }

    /// Appends a layer, naming it as Keras does: `dense`, `dense_1`, `dense_2`, ...
    pub fn push(&mut self, mut row: LayerRow) {
        let base = snake_case(&row.kind);
        let count = self.counters.entry(base.clone()).or_insert(0);
        row.name = if *count == 0 {
            base
        } else {
            format!("{base}_{count}")
        };
        *count += 1;
        self.layers.push(row);
    }

    pub fn trainable_params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    pub fn non_trainable_params(&self) -> usize {
        self.layers.iter().map(|l| l.non_trainable).sum()
    }

    pub fn total_params(&self) -> usize {
        self.trainable_params() + self.non_trainable_params()
    }
}

fn snake_case(kind: &str) -> String {
    let mut out = String::new();
    let mut previous: Option<char> = None;
    for c in kind.chars() {
        if c.is_ascii_uppercase() && previous.is_some_and(|p| !p.is_ascii_digit()) {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
        previous = Some(c);
    }
    out
}

/// `51370` as `51,370`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A parameter count as float32 bytes, in Keras's units (`200.66 KB`).
fn bytes(params: usize) -> String {
    let b = params as f64 * 4.0;
    if b < 1024.0 {
        format!("{b:.2} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2} KB", b / 1024.0)
    } else {
        format!("{:.2} MB", b / (1024.0 * 1024.0))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const W: [usize; 4] = [36, 24, 12, 14];
        let width: usize = W.iter().sum();
        writeln!(f, "Model: \"{}\"", self.model_name)?;
        writeln!(f, "{}", "_".repeat(width))?;
        writeln!(
            f,
            " {:<a$}{:<b$}{:>c$}   {:<d$}",
            "Layer (type)",
            "Output Shape",
            "Param #",
            "Notes",
            a = W[0] - 1,
            b = W[1],
            c = W[2],
            d = W[3] - 3
        )?;
        writeln!(f, "{}", "=".repeat(width))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let shape = format!(
                "(None, {})",
                layer
                    .output
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            writeln!(
                f,
                " {:<a$}{:<b$}{:>c$}   {}",
                format!("{} ({})", layer.name, layer.kind),
                shape,
                thousands(layer.params + layer.non_trainable),
                layer.note,
                a = W[0] - 1,
                b = W[1],
                c = W[2],
            )?;
            if i + 1 < self.layers.len() {
                writeln!(f)?;
            }
        }
        writeln!(f, "{}", "=".repeat(width))?;
        let (total, trainable, frozen) = (
            self.total_params(),
            self.trainable_params(),
            self.non_trainable_params(),
        );
        writeln!(f, "Total params: {} ({})", thousands(total), bytes(total))?;
        writeln!(
            f,
            "Trainable params: {} ({})",
            thousands(trainable),
            bytes(trainable)
        )?;
        writeln!(
            f,
            "Non-trainable params: {} ({})",
            thousands(frozen),
            bytes(frozen)
        )?;
        write!(f, "{}", "_".repeat(width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras_names_and_separators() {
        let mut s = Summary::new("m");
        s.push(LayerRow::new("Dense", vec![60], 47100));
        s.push(LayerRow::new("Dense", vec![10], 610));
        s.push(LayerRow::new("Conv2D", vec![26, 26, 32], 320));
        s.push(LayerRow::new("BatchNormalization", vec![32], 64).with_non_trainable(64));
        let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["dense", "dense_1", "conv2d", "batch_normalization"]);
        assert_eq!(thousands(51370), "51,370");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(bytes(51370), "200.66 KB");
        assert_eq!(s.total_params(), 47100 + 610 + 320 + 128);
    }
}
