//go:build !linux

package webdriver

import "os/exec"

// setProcessGroup does nothing outside Linux: the tests run on Debian.
func setProcessGroup(cmd *exec.Cmd) {}

// killGroup kills chromedriver only.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
}

// groupAlive cannot tell outside Linux; it reports false.
func groupAlive(cmd *exec.Cmd) bool { return false }
