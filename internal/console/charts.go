package console

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"
)

// The console's charts are SVG drawn here, on the server: no chart
// library, no script, nothing for the Content-Security-Policy to allow.
// Every chart has labelled axes with units and a <title> for screen
// readers; colours come from classes in static/console.css.

// svgText escapes s for SVG text and attributes.
func svgText(s string) string { return template.HTMLEscapeString(s) }

// niceCeil is the smallest of 1, 2, 2.5 or 5 times a power of ten at
// least v (1 for v <= 0): the top of a value axis.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// formatValue prints v with its unit, compactly: 1.2k/s, 35%, 0.12 s.
func formatValue(v float64, unit string) string {
	switch unit {
	case "%":
		return strings.TrimSuffix(strconv.FormatFloat(v*100, 'f', 1, 64), ".0") + "%"
	case "s":
		switch {
		case v == 0:
			return "0 s"
		case v < 0.001:
			return fmt.Sprintf("%.0f µs", v*1e6)
		case v < 1:
			return fmt.Sprintf("%.0f ms", v*1e3)
		}
		if v >= 120 {
			return strconv.FormatFloat(v/60, 'f', 0, 64) + " min"
		}
		return strconv.FormatFloat(v, 'g', 3, 64) + " s"
	}
	s := compact(v)
	if unit != "" {
		s += " " + unit
	}
	return s
}

// compact prints v with at most three significant digits and a k/M
// suffix.
func compact(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case a >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	case a == math.Trunc(a):
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// line is one series of a line chart: its label, a CSS class for its
// colour ("" for the default), and its points.
type line struct {
	Label, Class string
	Points       []Point
}

// lineChart draws pts over the window ending at now: time across (minutes
// ago), value up (in unit), with the last value in the title.
func lineChart(title, unit string, pts []Point, window time.Duration, now time.Time) template.HTML {
	return linesChart(title, unit, []line{{Points: pts}}, window, now)
}

// linesChart draws several series on one scale, each with its last value
// in the title (a legend in the series' colours).
func linesChart(title, unit string, lines []line, window time.Duration, now time.Time) template.HTML {
	const w, h, left, right, padTop, bottom = 380, 150, 56, 12, 22, 30
	pw, ph := float64(w-left-right), float64(h-padTop-bottom)
	mins := window.Minutes()
	var b strings.Builder
	var lasts []string
	drawn := false
	top := 0.0
	for _, l := range lines {
		last := "no data yet"
		if len(l.Points) > 0 {
			drawn = true
			last = formatValue(l.Points[len(l.Points)-1].Value, unit)
		}
		if l.Label != "" {
			last = l.Label + " " + last
		}
		lasts = append(lasts, last)
		for _, p := range l.Points {
			if now.Sub(p.At).Minutes() <= mins {
				top = max(top, p.Value)
			}
		}
	}
	summary := strings.Join(lasts, ", ")
	fmt.Fprintf(&b, `<svg class="chart line" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s, last hour: now %s">`, w, h, w, h, svgText(title), svgText(summary))
	fmt.Fprintf(&b, `<title>%s, last hour: now %s</title>`, svgText(title), svgText(summary))
	fmt.Fprintf(&b, `<text class="ctitle" x="%d" y="14">%s`, left, svgText(title))
	for i, l := range lines {
		fmt.Fprintf(&b, ` <tspan class="now %s">%s</tspan>`, svgText(l.Class), svgText(lasts[i]))
	}
	b.WriteString(`</text>`)
	if unit == "%" {
		top = max(top, 0.01)
	}
	top = niceCeil(top)
	// Value axis: 0, half, top.
	for _, f := range []float64{0, 0.5, 1} {
		py := float64(h-bottom) - f*ph
		fmt.Fprintf(&b, `<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`, left, w-right, py, py)
		fmt.Fprintf(&b, `<text class="tick" x="%d" y="%.1f" text-anchor="end">%s</text>`, left-4, py+4, svgText(formatValue(f*top, unit)))
	}
	// Time axis: minutes ago.
	for _, m := range []float64{mins, mins * 3 / 4, mins / 2, mins / 4, 0} {
		px := float64(left) + (1-m/mins)*pw
		label := "now"
		if m > 0 {
			label = "-" + strconv.FormatFloat(m, 'f', 0, 64)
		}
		fmt.Fprintf(&b, `<text class="tick" x="%.1f" y="%d" text-anchor="middle">%s</text>`, px, h-bottom+14, label)
	}
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">minutes ago</text>`, w-right, h-2)
	fmt.Fprintf(&b, `<line class="axisline" x1="%d" x2="%d" y1="%d" y2="%d"/>`, left, w-right, h-bottom, h-bottom)
	if !drawn {
		fmt.Fprintf(&b, `<text class="empty" x="%.1f" y="%.1f" text-anchor="middle">no rate yet (the first after 10 s)</text>`, float64(left)+pw/2, float64(padTop)+ph/2)
	}
	for _, l := range lines {
		if len(l.Points) == 0 {
			continue
		}
		fmt.Fprintf(&b, `<polyline class="series %s" points="`, svgText(l.Class))
		var lx, ly float64
		for _, p := range l.Points {
			ago := now.Sub(p.At).Minutes()
			if ago > mins {
				continue
			}
			lx, ly = float64(left)+(1-ago/mins)*pw, float64(h-bottom)-p.Value/top*ph
			fmt.Fprintf(&b, "%.1f,%.1f ", lx, ly)
		}
		// The newest point, marked: one sample alone draws no line.
		fmt.Fprintf(&b, `"/><circle class="last %s" cx="%.1f" cy="%.1f" r="3"/>`, svgText(l.Class), lx, ly)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text and numbers
}

// bar is one labelled value of a bar chart.
type bar struct {
	Label string
	Value float64
	Class string // a CSS class for its colour; "" for the default
}

// barChart draws horizontal bars with their values, on a scale from 0 to
// the largest, with unit on the axis.
func barChart(title, unit string, bars []bar) template.HTML {
	const w, rowH, left, right = 420, 22, 150, 70
	h := 28 + rowH*max(len(bars), 1)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart bars" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`, w, h, w, h, svgText(title))
	parts := make([]string, len(bars))
	top := 0.0
	for i, x := range bars {
		top = max(top, x.Value)
		parts[i] = x.Label + " " + formatValue(x.Value, unit)
	}
	fmt.Fprintf(&b, `<title>%s: %s</title>`, svgText(title), svgText(strings.Join(parts, ", ")))
	fmt.Fprintf(&b, `<text class="ctitle" x="0" y="14">%s</text>`, svgText(title))
	if len(bars) == 0 {
		fmt.Fprintf(&b, `<text class="empty" x="%d" y="40">none yet</text>`, left)
	}
	top = niceCeil(top)
	pw := float64(w - left - right)
	for i, x := range bars {
		y := 22 + i*rowH
		fmt.Fprintf(&b, `<text class="label" x="%d" y="%d" text-anchor="end">%s</text>`, left-6, y+14, svgText(x.Label))
		cls := "bar"
		if x.Class != "" {
			cls += " " + x.Class
		}
		bw := x.Value / top * pw
		fmt.Fprintf(&b, `<rect class="%s" x="%d" y="%d" width="%.1f" height="%d"/>`, svgText(cls), left, y+2, bw, rowH-6)
		fmt.Fprintf(&b, `<text class="value" x="%.1f" y="%d">%s</text>`, float64(left)+bw+4, y+14, svgText(formatValue(x.Value, unit)))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text and numbers
}

// liftScale is the common axis of a page's lift bars: from lo to hi (as
// fractions: -0.5 is -50%), always including 0.
type liftScale struct{ Lo, Hi float64 }

// newLiftScale spans every interval given, with a margin, within
// [-100%, +1000%].
func newLiftScale(ivs ...[2]float64) liftScale {
	lo, hi := -0.1, 0.1
	for _, iv := range ivs {
		lo, hi = min(lo, iv[0]), max(hi, iv[1])
	}
	return liftScale{Lo: max(lo*1.1, -1), Hi: min(hi*1.1, 10)}
}

func (s liftScale) x(v, width float64) float64 {
	v = min(max(v, s.Lo), s.Hi)
	return (v - s.Lo) / (s.Hi - s.Lo) * width
}

// liftBar draws a campaign's lift and its 95% confidence interval on the
// scale: the bar is the interval, the dot the estimate, the line zero. A
// bar clear of zero is a significant lift (or loss).
func liftBar(s liftScale, lift, low, high float64) template.HTML {
	const w, h = 240.0, 26.0
	var b strings.Builder
	cls := "ci"
	switch {
	case low > 0:
		cls += " win"
	case high < 0:
		cls += " loss"
	}
	desc := fmt.Sprintf("lift %s, 95%% interval %s to %s", pct(lift), pct(low), pct(high))
	fmt.Fprintf(&b, `<svg class="chart lift" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="%s"><title>%s</title>`, w, h, w, h, svgText(desc), svgText(desc))
	x0 := s.x(0, w)
	fmt.Fprintf(&b, `<line class="zero" x1="%.1f" x2="%.1f" y1="0" y2="%.0f"/>`, x0, x0, h)
	xl, xh := s.x(low, w), s.x(high, w)
	fmt.Fprintf(&b, `<rect class="%s" x="%.1f" y="8" width="%.1f" height="10"/>`, cls, xl, max(xh-xl, 1))
	fmt.Fprintf(&b, `<circle class="est" cx="%.1f" cy="13" r="4"/>`, s.x(lift, w))
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // numbers only, and escaped text
}

// liftAxis draws the scale of the lift bars, in percent, for the table's
// header.
func liftAxis(s liftScale) template.HTML {
	const w, h = 240.0, 30.0
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart lift axis" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="lift axis from %s to %s">`, w, h, w, h, pct(s.Lo), pct(s.Hi))
	for _, v := range []float64{s.Lo, 0, s.Hi} {
		x := s.x(v, w)
		if v == 0 && (x < 36 || x > w-36) {
			continue // the end's label would cover it
		}
		anchor := "middle"
		switch v {
		case s.Lo:
			anchor = "start"
		case s.Hi:
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text class="tick" x="%.1f" y="12" text-anchor="%s">%s</text>`, x, anchor, svgText(pct(v)))
	}
	fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="26" text-anchor="middle">lift (%%), 95%% interval</text>`, w/2)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // numbers only
}

// pct prints a fraction as a signed percentage.
func pct(v float64) string {
	return strconv.FormatFloat(v*100, 'f', 1, 64) + "%"
}

// mark is a moment on a user's timeline.
type mark struct {
	At    time.Time
	Label string
	Class string // "event", "exposure", "timer"
}

// timeline draws marks on a time axis from the earliest to the latest
// (now included), labelled in days or hours from now. Marks are stacked
// in rows so their labels do not overlap.
func timeline(marks []mark, now time.Time) template.HTML {
	const w, left, right, rowH = 900.0, 20.0, 20.0, 18.0
	from, to := now, now
	for _, m := range marks {
		if m.At.Before(from) {
			from = m.At
		}
		if m.At.After(to) {
			to = m.At
		}
	}
	span := max(to.Sub(from), time.Hour)
	from = from.Add(-span / 20)
	to = to.Add(span / 20)
	span = to.Sub(from)
	x := func(t time.Time) float64 { return left + float64(t.Sub(from))/float64(span)*(w-left-right) }
	rows := len(marks)
	h := 46 + rowH*float64(max(rows, 1))
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart timeline" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="timeline of %d moments">`, w, h, w, h, len(marks))
	b.WriteString(`<title>The profile's moments: last events, exposures and pending timers</title>`)
	axisY := h - 30
	fmt.Fprintf(&b, `<line class="axisline" x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f"/>`, left, w-right, axisY, axisY)
	xn := x(now)
	fmt.Fprintf(&b, `<line class="zero" x1="%.1f" x2="%.1f" y1="0" y2="%.0f"/><text class="tick" x="%.1f" y="%.0f" text-anchor="middle">now</text>`, xn, xn, axisY, xn, axisY+14)
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
		t := from.Add(time.Duration(f * float64(span)))
		if math.Abs(x(t)-xn) < 40 {
			continue
		}
		anchor := "middle"
		switch f {
		case 0:
			anchor = "start"
		case 1:
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text class="tick" x="%.1f" y="%.0f" text-anchor="%s">%s</text>`, x(t), axisY+14, anchor, svgText(relTime(t, now)))
	}
	fmt.Fprintf(&b, `<text class="axis" x="%.0f" y="%.0f" text-anchor="end">time (relative to now)</text>`, w-right, h-2)
	for i, m := range marks {
		y := 12 + float64(i)*rowH
		px := x(m.At)
		anchor, tx := "start", px+7
		if px > w/2 {
			anchor, tx = "end", px-7
		}
		fmt.Fprintf(&b, `<line class="stem" x1="%.1f" x2="%.1f" y1="%.1f" y2="%.0f"/>`, px, px, y, axisY)
		fmt.Fprintf(&b, `<circle class="mark %s" cx="%.1f" cy="%.1f" r="4"/>`, svgText(m.Class), px, y)
		fmt.Fprintf(&b, `<text class="label" x="%.1f" y="%.1f" text-anchor="%s">%s (%s)</text>`, tx, y+4, anchor, svgText(m.Label), svgText(relTime(m.At, now)))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text and numbers
}

// relTime says how far t is from now: "3d ago", "in 2h", "40m ago".
func relTime(t, now time.Time) string {
	d := now.Sub(t)
	suffix := " ago"
	if d < 0 {
		d, suffix = -d, ""
	}
	var s string
	switch {
	case d >= 48*time.Hour:
		s = strconv.Itoa(int(d.Hours()/24)) + "d"
	case d >= 2*time.Hour:
		s = strconv.Itoa(int(d.Hours())) + "h"
	case d >= 2*time.Minute:
		s = strconv.Itoa(int(d.Minutes())) + "m"
	default:
		s = strconv.Itoa(int(d.Seconds())) + "s"
	}
	if suffix == "" {
		return "in " + s
	}
	return s + suffix
}
