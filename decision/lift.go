package decision

import (
	"math"
	"math/rand/v2"

	"github.com/nudge-dm/nudge/profile"
)

// This file is the statistics of campaign reports and the sampler of
// offers that learn. docs/rules.md ("Measuring campaigns") explains them
// for a marketer.

// Comparison compares a campaign's treated users with its control group.
// A field whose Has flag is false is undefined for the counts (for
// example a lift without control conversions).
type Comparison struct {
	// Uplift is the difference of the conversion rates, treated minus
	// control (0.021 - 0.003 = 0.018: 1.8 points). Defined when both
	// groups have exposed users.
	Uplift    float64
	HasUplift bool
	// Lift is the uplift relative to the control rate (treated / control
	// - 1: 6 means seven times the control rate), with its 95% confidence
	// interval [LiftLow, LiftHigh]. Defined when the control group has
	// conversions.
	Lift, LiftLow, LiftHigh float64
	HasLift                 bool
	// PValue is the two-sided p-value of the difference of the rates,
	// by the pooled two-proportion z-test: the chance of a difference at
	// least this large if the campaign did nothing. Defined when both
	// groups have exposed users.
	PValue    float64
	HasPValue bool
}

// z95 is the standard normal quantile of a two-sided 95% interval.
const z95 = 1.959963984540054

// Compare compares treated with control. The interval of the lift is the
// log relative-risk (Katz) interval, exp(ln(rt/rc) ± 1.96·se) - 1 with
// se² = 1/ct - 1/nt + 1/cc - 1/nc; when a group has no conversion (or
// every user converted), half a user is added to its converted and
// unconverted counts for the interval (Haldane-Anscombe), so that it
// stays finite, and the interval is widened to hold the raw estimate.
func Compare(treated, control profile.Arm) Comparison {
	var c Comparison
	nt, nc := float64(treated.Exposed), float64(control.Exposed)
	ct, cc := float64(treated.Converted), float64(control.Converted)
	if nt <= 0 || nc <= 0 {
		return c
	}
	rt, rc := ct/nt, cc/nc
	c.Uplift, c.HasUplift = rt-rc, true

	pooled := (ct + cc) / (nt + nc)
	se := math.Sqrt(pooled * (1 - pooled) * (1/nt + 1/nc))
	c.HasPValue = true
	if se > 0 {
		z := (rt - rc) / se
		c.PValue = math.Erfc(math.Abs(z) / math.Sqrt2)
	} else {
		c.PValue = 1 // nobody or everybody converted: no difference to see
	}

	if cc <= 0 {
		return c
	}
	c.Lift, c.HasLift = rt/rc-1, true
	if ct <= 0 || ct >= nt || cc >= nc {
		ct, nt, cc, nc = ct+0.5, nt+1, cc+0.5, nc+1
	}
	logRR := math.Log((ct / nt) / (cc / nc))
	seLog := math.Sqrt(1/ct - 1/nt + 1/cc - 1/nc)
	// The corrected interval may leave out the raw estimate (0 treated
	// conversions: lift -1); it is widened to hold it.
	c.LiftLow = min(math.Exp(logRR-z95*seLog)-1, c.Lift)
	c.LiftHigh = max(math.Exp(logRR+z95*seLog)-1, c.Lift)
	return c
}

// BetaSampler is a Sampler over measured counts: an offer's conversion
// rate is drawn from Beta(1 + converted, 1 + exposed - converted), its
// posterior from a uniform prior. It is safe for concurrent use when
// Counts is.
type BetaSampler struct {
	// Counts gives an offer's treated users exposed and converted.
	Counts func(offerID string) (exposed, converted int64)
	// Rand is the source of the draws; nil is math/rand/v2's global
	// source, which is safe for concurrent use (a *rand.Rand is not).
	Rand *rand.Rand
}

// Sample implements Sampler.
func (s BetaSampler) Sample(offerID string) (float64, int64, int64) {
	var exposed, converted int64
	if s.Counts != nil {
		exposed, converted = s.Counts(offerID)
	}
	converted = max(0, min(converted, exposed))
	a := 1 + float64(converted)
	b := 1 + float64(max(exposed-converted, 0))
	return drawBeta(s, a, b), exposed, converted
}

func (s BetaSampler) float64() float64 {
	if s.Rand != nil {
		return s.Rand.Float64()
	}
	return rand.Float64()
}

func (s BetaSampler) norm() float64 {
	if s.Rand != nil {
		return s.Rand.NormFloat64()
	}
	return rand.NormFloat64()
}

// drawBeta draws from Beta(a, b), a, b >= 1, as X/(X+Y) of two gamma
// draws.
func drawBeta(s BetaSampler, a, b float64) float64 {
	x, y := drawGamma(s, a), drawGamma(s, b)
	return x / (x + y)
}

// drawGamma draws from Gamma(a, 1), a >= 1, by Marsaglia and Tsang's
// method ("A simple method for generating gamma variables", 2000).
func drawGamma(s BetaSampler, a float64) float64 {
	d := a - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := s.norm()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := s.float64()
		if u < 1-0.0331*x*x*x*x || math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}
