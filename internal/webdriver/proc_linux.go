//go:build linux

package webdriver

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// setProcessGroup puts chromedriver, and the chromium processes it starts,
// in a process group of their own, so that killGroup stops them all and a
// Ctrl-C meant for the test binary reaches only the test binary, which
// then stops the group. Pdeathsig kills chromedriver if the test binary
// dies without Close (a test timeout panics and exits): Go threads only
// exit when a goroutine locked to one ends, which Start's callers do not
// do, so the signal does not fire early. Chromium follows chromedriver
// (--remote-debugging-pipe).
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup kills every process of cmd's group.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	// The group id is chromedriver's pid (Setpgid with Pgid 0).
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		_ = cmd.Process.Kill()
	}
}

// groupAlive reports whether a process of cmd's group is still running.
// Zombies do not count: chromium's helpers, orphaned when chromium exits,
// wait for PID 1 to reap them, which in a container may take seconds or
// never happen, and they hold nothing.
func groupAlive(cmd *exec.Cmd) bool {
	if cmd.Process == nil {
		return false
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and
		// parentheses, so split after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 3 || string(f[0]) == "Z" || string(f[0]) == "X" {
			continue
		}
		if pgrp, err := strconv.Atoi(string(f[2])); err == nil && pgrp == cmd.Process.Pid {
			return true
		}
	}
	return false
}
