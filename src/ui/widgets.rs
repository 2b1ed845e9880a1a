//! Widgets egui does not have: a two-handle range slider for windows of the sampling steps.

use egui::{Pos2, Rect, Sense, Stroke, Vec2};

/// Which handle of a range slider a drag moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handle {
    Start,
    End,
}

/// A window `[start, end]` of [0, 1] as its label, then one slider with two handles and the two
/// numbers beside it to type. A press moves the nearer handle there and drags it; the start never passes the
/// end. `label` names it for people and assistive tools. Returns whether the window changed.
pub fn range_slider(ui: &mut egui::Ui, window: &mut (f64, f64), label: &str, tip: &str) -> bool {
    let before = *window;
    let name = ui.label(label);
    ui.horizontal(|ui| {
        let size = Vec2::new(ui.spacing().slider_width, ui.spacing().interact_size.y);
        let (rect, response) = ui.allocate_exact_size(size, Sense::click_and_drag());
        let radius = rect.height() / 2.5;
        let track = Rect::from_min_max(
            Pos2::new(rect.left() + radius, rect.center().y),
            Pos2::new(rect.right() - radius, rect.center().y),
        );
        let x_of = |value: f64| track.left() + value.clamp(0.0, 1.0) as f32 * track.width();
        let value_at = |x: f32| f64::from(((x - track.left()) / track.width().max(1.0)).clamp(0.0, 1.0));
        // a press takes the nearer handle (on one point: the end if to the right) until the release
        let id = response.id;
        let held: Option<Handle> = ui.data(|d| d.get_temp(id));
        if let Some(pointer) = response.interact_pointer_pos() {
            let handle = held.unwrap_or_else(|| {
                let (start, end) = ((pointer.x - x_of(window.0)).abs(), (pointer.x - x_of(window.1)).abs());
                if start < end || (start == end && pointer.x < x_of(window.0)) {
                    Handle::Start
                } else {
                    Handle::End
                }
            });
            ui.data_mut(|d| d.insert_temp(id, handle));
            let value = value_at(pointer.x);
            match handle {
                Handle::Start => window.0 = value.min(window.1),
                Handle::End => window.1 = value.max(window.0),
            }
        } else if held.is_some() {
            ui.data_mut(|d| d.remove::<Handle>(id));
        }
        // the track, the window on it, the two handles
        let visuals = ui.style().interact(&response);
        let painter = ui.painter_at(rect.expand(2.0));
        painter.line_segment(
            [track.left_center(), track.right_center()],
            Stroke::new(4.0, ui.visuals().faint_bg_color),
        );
        painter.line_segment(
            [Pos2::new(x_of(window.0), track.center().y), Pos2::new(x_of(window.1), track.center().y)],
            Stroke::new(4.0, ui.visuals().selection.bg_fill),
        );
        for value in [window.0, window.1] {
            let centre = Pos2::new(x_of(value), track.center().y);
            painter.circle(centre, radius, visuals.bg_fill, visuals.fg_stroke);
        }
        let enabled = ui.is_enabled();
        let (start, end) = *window;
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Slider, enabled, label));
        response.on_hover_text(format!("{tip}\n{start:.2} to {end:.2} of the steps"));
        let mut start_value = window.0;
        let mut end_value = window.1;
        let speed = 0.01;
        let start_field =
            ui.add(egui::DragValue::new(&mut start_value).range(0.0..=1.0).speed(speed).max_decimals(2));
        ui.label("to");
        let end_field =
            ui.add(egui::DragValue::new(&mut end_value).range(0.0..=1.0).speed(speed).max_decimals(2));
        start_field.labelled_by(name.id);
        end_field.labelled_by(name.id);
        if start_value != window.0 {
            window.0 = start_value.min(window.1);
        }
        if end_value != window.1 {
            window.1 = end_value.max(window.0);
        }
    });
    *window != before
}

#[cfg(test)]
mod tests {
    use egui_kittest::kittest::Queryable;

    use super::*;

    fn slider_rect(harness: &egui_kittest::Harness<'_, (f64, f64)>) -> Rect {
        harness.get_by_role_and_label(egui::accesskit::Role::Slider, "window").rect()
    }

    #[test]
    fn dragging_either_handle_moves_that_end_and_the_start_never_passes_the_end() {
        let mut harness = egui_kittest::Harness::new_ui_state(
            |ui, window: &mut (f64, f64)| {
                range_slider(ui, window, "window", "a test window");
            },
            (0.2, 0.8),
        );
        harness.run();
        let rect = slider_rect(&harness);
        let radius = rect.height() / 2.5;
        let x_at = |v: f32| rect.left() + radius + v * (rect.width() - 2.0 * radius);
        let drag = |harness: &mut egui_kittest::Harness<'_, (f64, f64)>, from: f32, to: f32| {
            harness.drag_at(Pos2::new(x_at(from), rect.center().y));
            harness.run();
            harness.hover_at(Pos2::new(x_at(to), rect.center().y));
            harness.run();
            harness.drop_at(Pos2::new(x_at(to), rect.center().y));
            harness.run();
        };
        // the end handle, from 0.8 to 0.5
        drag(&mut harness, 0.8, 0.5);
        let (start, end) = *harness.state();
        assert!((start - 0.2).abs() < 1e-9 && (end - 0.5).abs() < 0.02, "{start} {end}");
        // the start handle, from 0.2 past the end: it stops at the end
        drag(&mut harness, 0.2, 0.9);
        let (start, end) = *harness.state();
        assert!((start - end).abs() < 1e-9 && (end - 0.5).abs() < 0.02, "{start} {end}");
    }
}
