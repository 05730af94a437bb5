// Package examples holds the example rules file, embedded so nudged can
// start with it when no rules file is given.
package examples

import _ "embed"

// Rules is examples/rules.yaml.
//
//go:embed rules.yaml
var Rules []byte

// RulesName is the name errors in the embedded rules refer to.
const RulesName = "examples/rules.yaml (bundled)"
