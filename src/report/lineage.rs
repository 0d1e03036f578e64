//! The lineage graph as SVG: layout-rs places the boxes (one per table and stage, left to
//! right) and routes the edges; this module only says what each box says and how it looks.

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::{Node, Report, detail_i64};
use crate::progress::thousands;

const FONT: usize = 13;

/// The graph of `report` as an `<svg>` element (no XML prologue, ready to inline).
pub fn svg(report: &Report) -> String {
    let mut graph = VisualGraph::new(Orientation::LeftToRight);
    let handles: Vec<_> = report
        .nodes
        .iter()
        .map(|node| {
            let text = label(node);
            let size = box_size(&text);
            let shape = ShapeKind::new_box(&text);
            let (line, fill) = colors(node.status());
            let look = StyleAttr::new(Color::new(line), 2, Some(Color::new(fill)), 6, FONT);
            graph.add_node(Element::create_with_properties(
                shape,
                look,
                Orientation::LeftToRight,
                size,
                format!(
                    "class=\"node {}\" data-node=\"{}\"",
                    status_class(node.status()),
                    super::html::escape(&node.id())
                ),
            ))
        })
        .collect();
    for &(from, to) in &report.edges {
        // A lookup (into a fact or another dimension) is dashed: a join, not a copy.
        let lookup = report.nodes[from].layer == "gold" && report.nodes[to].layer == "gold";
        let look = StyleAttr::new(Color::new(0x5f6368ff), 1, None, 0, FONT);
        let arrow = Arrow::new(
            LineEndKind::None,
            LineEndKind::Arrow,
            if lookup {
                LineStyleKind::Dashed
            } else {
                LineStyleKind::Normal
            },
            "",
            &look,
            &None,
            &None,
        );
        graph.add_edge(arrow, handles[from], handles[to]);
    }
    let mut writer = SVGWriter::new();
    graph.do_it(false, false, false, &mut writer);
    // layout-rs grows its canvas by a text's length in both directions, which leaves a blank
    // band under the graph; the boxes' own extent is the real size.
    let (width, height) = handles.iter().fold((0.0f64, 0.0f64), |(w, h), &node| {
        let (_, bottom_right) = graph.pos(node).bbox(false);
        (w.max(bottom_right.x), h.max(bottom_right.y))
    });
    let svg = writer.finalize();
    // The page inlines the SVG; an XML prologue is not allowed there.
    let body = svg.find("<svg").map_or(svg.as_str(), |at| &svg[at..]);
    let body = body.find('>').map_or(body, |end| &body[end + 1..]);
    let (width, height) = (width.ceil() + 12.0, height.ceil() + 12.0);
    format!(
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"lineage\">{body}"
    )
}

/// What a box says: the layer and name, then this run's rows and time.
fn label(node: &Node) -> String {
    let mut lines = vec![format!("{} · {}", node.layer, node.name)];
    let Some(e) = &node.event else {
        if node.layer != "source" {
            lines.push("not in this run".to_string());
        }
        return lines.join("\n");
    };
    match node.layer {
        "bronze" => lines.push(format!(
            "{} rows · {} files",
            thousands(e.rows_out.max(0) as u64),
            detail_i64(e, "files")
        )),
        "silver" => {
            lines.push(format!(
                "in {} · out {}",
                thousands(e.rows_in.max(0) as u64),
                thousands(e.rows_out.max(0) as u64)
            ));
            lines.push(format!(
                "dropped {} · rescued {} · dup {}",
                thousands(e.rows_dropped.max(0) as u64),
                thousands(e.rows_rescued.max(0) as u64),
                thousands(detail_i64(e, "duplicates").max(0) as u64)
            ));
        }
        "gold" => {
            lines.push(format!(
                "in {} · +{} rows",
                thousands(e.rows_in.max(0) as u64),
                thousands(detail_i64(e, "inserted").max(0) as u64)
            ));
            lines.push(format!(
                "updated {} · closed {} · deleted {}",
                thousands(detail_i64(e, "updated").max(0) as u64),
                thousands(detail_i64(e, "closed").max(0) as u64),
                thousands(detail_i64(e, "deleted").max(0) as u64)
            ));
        }
        _ => lines.push(format!("{} rows", thousands(e.rows_out.max(0) as u64))),
    }
    lines.push(format!("{} · {:.2} s", e.status.to_uppercase(), e.seconds));
    lines.join("\n")
}

/// A box that fits `text` in the page's sans-serif font. layout-rs sizes boxes for one
/// font-size of width per character, which suits its serif default but makes the page twice
/// as wide as it needs to be.
fn box_size(text: &str) -> Point {
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(1);
    let lines = text.lines().count().max(1);
    Point::new(
        widest as f64 * FONT as f64 * 0.6 + 24.0,
        (lines + 1) as f64 * FONT as f64 + 6.0,
    )
}

/// (line, fill) as RGBA.
fn colors(status: &str) -> (u32, u32) {
    match status {
        "ok" => (0x188038ff, 0xe6f4eaff),
        "empty" => (0x80868bff, 0xf1f3f4ff),
        "failed" => (0xd93025ff, 0xfce8e6ff),
        _ => (0xbdc1c6ff, 0xffffffff),
    }
}

fn status_class(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "empty" => "empty",
        "failed" => "failed",
        _ => "not-run",
    }
}
