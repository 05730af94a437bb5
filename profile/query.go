package profile

import "time"

// The queries of this file are what features for models need beyond
// Count: sums of event values, distinct categories, sessions and active
// days, each over a window ending at now, read from the tier of counts
// the window reaches (see Count).

// Sum returns the sum of the values of the events of the given type and
// category (every category when empty) in the window ending at now, with
// Count's buckets.
func (p *Profile) Sum(typ, category string, window time.Duration, now time.Time) float64 {
	return 0 // TODO(issue 19): tiers
}

// Distinct returns how many distinct non-empty categories the events of
// the type had in the window ending at now, with Count's buckets.
func (p *Profile) Distinct(typ string, window time.Duration, now time.Time) int64 {
	return 0 // TODO(issue 19): tiers
}

// Sessions returns how many sessions the user had in the window ending at
// now: runs of events of any type in which no two consecutive events are
// gap or more apart, seen at the resolution of the tier the window
// reaches (a minute, an hour or a day).
func (p *Profile) Sessions(window, gap time.Duration, now time.Time) int64 {
	return 0 // TODO(issue 19): tiers
}

// ActiveDays returns on how many days (UTC) of the window ending at now
// the user had events of any type.
func (p *Profile) ActiveDays(window time.Duration, now time.Time) int64 {
	return 0 // TODO(issue 19): tiers
}
