package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResizeFixup(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{[]string{"resize", "a.img", "-1M"}, []string{"resize", "a.img", "--", "-1M"}},
		{[]string{"resize", "--shrink", "a.img", "-512k"}, []string{"resize", "--shrink", "a.img", "--", "-512k"}},
		{[]string{"resize", "a.img", "+1M"}, []string{"resize", "a.img", "+1M"}},
		{[]string{"resize", "a.img", "--", "-1M"}, []string{"resize", "a.img", "--", "-1M"}},
		{[]string{"resize", "a.img", "--shrink"}, []string{"resize", "a.img", "--shrink"}},
		{[]string{"info", "a.img", "-1"}, []string{"info", "a.img", "-1"}},
	} {
		if got := resizeFixup(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: got %v, want %v", c.in, got, c.want)
		}
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	// Silence the commands' output.
	devnull, _ := os.Open(os.DevNull)
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = devnull, devnull
	defer func() { os.Stdout, os.Stderr = stdout, stderr; devnull.Close() }()
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"create", "-q", img, "1M"}, 0},
		{[]string{"info", img}, 0},
		{[]string{"info", filepath.Join(dir, "missing")}, 1},
		{[]string{"check", img}, 63},
		{[]string{"compare", img, img}, 0},
		{[]string{"compare", img, filepath.Join(dir, "missing")}, 2},
		{[]string{"io", "-c", "read -P 1 0 1", img}, 1},
		{[]string{"resize", img, "-1k"}, 1},
		{[]string{"info", "--no-such-flag", img}, 1},
	} {
		if got := run(c.args); got != c.want {
			t.Errorf("vdisk %v: exit %d, want %d", c.args, got, c.want)
		}
	}
}

func TestDevString(t *testing.T) {
	for _, c := range []struct {
		major, minor uint32
		want         string
	}{
		{8, 1, "8,1"},
		{0, 45, "0,45"},
		{259, 300, "259,300"},
		{0x12345, 0x123456, "74565,1193046"},
		{4095, 1<<20 - 1, "4095,1048575"},
	} {
		if got := devString(unix.Mkdev(c.major, c.minor)); got != c.want {
			t.Errorf("devString(%d:%d) = %s, want %s", c.major, c.minor, got, c.want)
		}
	}
}
