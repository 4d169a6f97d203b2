// Package tests runs vdisk's end-to-end tests in the style of
// qemu-iotests: each NNN-name.sh script under this directory drives the
// vdisk binary, and its output (stdout and stderr, with the scratch
// directory replaced by $TEST_DIR) must equal NNN-name.out.
//
// Numbering: 001-099 foundation, 100-199 qcow2, 200-299 vhd, 300-399
// attach, 400-499 nbd. A script may declare needs on a line
// "# needs: qemu-img root fuse" ; a need that is missing fails the test,
// because CI provides all of them. Run one test with
// `go test ./tests -run 'Script/001'`; regenerate an expected file with
// `VDISK_UPDATE=1 go test ./tests -run 'Script/001'` and review the diff.
package tests

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

var vdiskBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vdisk-bin-")
	if err != nil {
		panic(err)
	}
	vdiskBin = filepath.Join(dir, "vdisk")
	args := []string{"build", "-o", vdiskBin}
	if os.Getenv("VDISK_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/vdisk")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo())
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func cgo() string {
	if os.Getenv("VDISK_RACE") != "" {
		return "1"
	}
	return "0"
}

// Binary is the path of the vdisk binary built for the tests.
func Binary() string { return vdiskBin }

func TestScript(t *testing.T) {
	scripts, _ := filepath.Glob("[0-9][0-9][0-9]-*.sh")
	sort.Strings(scripts)
	if len(scripts) == 0 {
		t.Fatal("no test scripts found")
	}
	for _, s := range scripts {
		name := strings.TrimSuffix(s, ".sh")
		t.Run(name, func(t *testing.T) { runScript(t, s, name) })
	}
}

var needsRE = regexp.MustCompile(`(?m)^# needs: (.*)$`)

func checkNeeds(t *testing.T, script []byte) {
	m := needsRE.FindSubmatch(script)
	if m == nil {
		return
	}
	for _, need := range strings.Fields(string(m[1])) {
		switch need {
		case "root":
			if os.Geteuid() != 0 {
				t.Fatalf("test needs root")
			}
		case "fuse":
			if _, err := os.Stat("/dev/fuse"); err != nil {
				t.Fatalf("test needs /dev/fuse: %v", err)
			}
		default:
			if _, err := exec.LookPath(need); err != nil {
				t.Fatalf("test needs %s (installed by .ci/run): %v", need, err)
			}
		}
	}
}

func runScript(t *testing.T, script, name string) {
	body, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	checkNeeds(t, body)
	dir := t.TempDir()
	abs, _ := filepath.Abs(script)
	cmd := exec.Command("bash", abs)
	cmd.Dir = dir
	srcDir, _ := os.Getwd()
	cmd.Env = append(os.Environ(),
		"VDISK="+vdiskBin,
		"TEST_DIR="+dir,
		"SRC_DIR="+srcDir,
		"GOROOT_SRC="+goSrc(),
		"LC_ALL=C",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	got := filterOutput(out.String(), dir)
	if err != nil {
		got += "*** script exited: " + err.Error() + "\n"
	}
	want, rerr := os.ReadFile(name + ".out")
	if os.Getenv("VDISK_UPDATE") != "" {
		if werr := os.WriteFile(name+".out", []byte(got), 0o644); werr != nil {
			t.Fatal(werr)
		}
		return
	}
	if rerr != nil {
		t.Fatalf("missing expected output %s.out (VDISK_UPDATE=1 writes it); output was:\n%s", name, got)
	}
	if got != string(want) {
		t.Errorf("output differs from %s.out:\n%s", name, diff(string(want), got))
	}
}

func filterOutput(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "$TEST_DIR")
	s = strings.ReplaceAll(s, vdiskBin, "vdisk")
	return s
}

// diff shows the first differing lines; enough to see what broke.
func diff(want, got string) string {
	var b strings.Builder
	ws := bufio.NewScanner(strings.NewReader(want))
	gs := bufio.NewScanner(strings.NewReader(got))
	line, shown := 0, 0
	for {
		wok, gok := ws.Scan(), gs.Scan()
		if !wok && !gok {
			break
		}
		line++
		w, g := ws.Text(), gs.Text()
		if !wok {
			w = "<eof>"
		}
		if !gok {
			g = "<eof>"
		}
		if w != g {
			b.WriteString("line " + itoa(line) + ":\n  want: " + w + "\n  got:  " + g + "\n")
			if shown++; shown >= 10 {
				b.WriteString("...\n")
				break
			}
		}
	}
	return b.String()
}

func itoa(n int) string { return strconv.Itoa(n) }

// goSrc is the Go source tree the attach tests copy as "a real directory
// tree"; it is asked of the go command that builds the tests.
func goSrc() string {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "/usr/local/go/src"
	}
	return filepath.Join(strings.TrimSpace(string(out)), "src")
}
