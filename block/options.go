package block

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// OptionType is the type of a create option's value.
type OptionType int

const (
	OptString OptionType = iota
	OptSize              // bytes, with K/M/G/T/P/E suffixes
	OptBool              // on/off, true/false
	OptNumber            // a plain integer
)

func (t OptionType) String() string {
	return [...]string{"str", "size", "bool (on/off)", "num"}[t]
}

// OptionSpec describes one create option.
type OptionSpec struct {
	Name    string
	Type    OptionType
	Default string // as the user would type it; "" means no default
	Help    string
}

// Options are parsed, typed option values keyed by name. Values are
// string, int64 (sizes and numbers) or bool.
type Options map[string]any

// Size returns an OptSize or OptNumber value, or def if unset.
func (o Options) Size(name string, def int64) int64 {
	if v, ok := o[name].(int64); ok {
		return v
	}
	return def
}

// String returns an OptString value, or def if unset.
func (o Options) String(name, def string) string {
	if v, ok := o[name].(string); ok {
		return v
	}
	return def
}

// Bool returns an OptBool value, or def if unset.
func (o Options) Bool(name string, def bool) bool {
	if v, ok := o[name].(bool); ok {
		return v
	}
	return def
}

// Has reports whether the option was given (or defaulted).
func (o Options) Has(name string) bool { _, ok := o[name]; return ok }

// SplitOptionString splits qemu's "a=b,c=d" syntax, where ",," stands for a
// literal comma, into ordered key/value pairs. A bare key means "on" for
// booleans, and "help" or "?" asks for help.
func SplitOptionString(s string) ([][2]string, error) {
	var out [][2]string
	var cur strings.Builder
	flush := func() error {
		item := cur.String()
		cur.Reset()
		if item == "" {
			return nil
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok {
			v = ""
		}
		if k == "" {
			return fmt.Errorf("invalid option %q: empty name", item)
		}
		out = append(out, [2]string{k, v})
		return nil
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		cur.WriteByte(c)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// ParseOptions checks raw key/value pairs against specs, converts them to
// typed values and fills in defaults for options not given.
func ParseOptions(specs []OptionSpec, pairs [][2]string) (Options, error) {
	byName := map[string]OptionSpec{}
	for _, s := range specs {
		byName[s.Name] = s
	}
	o := Options{}
	for _, p := range pairs {
		spec, ok := byName[p[0]]
		if !ok {
			return nil, fmt.Errorf("invalid parameter '%s' (known: %s)", p[0], strings.Join(specNames(specs), ", "))
		}
		v, err := parseValue(spec, p[1], true)
		if err != nil {
			return nil, err
		}
		o[spec.Name] = v
	}
	for _, s := range specs {
		if _, ok := o[s.Name]; ok || s.Default == "" {
			continue
		}
		v, err := parseValue(s, s.Default, false)
		if err != nil {
			return nil, fmt.Errorf("default of %s: %w", s.Name, err)
		}
		o[s.Name] = v
	}
	return o, nil
}

func specNames(specs []OptionSpec) []string {
	n := make([]string, len(specs))
	for i, s := range specs {
		n[i] = s.Name
	}
	sort.Strings(n)
	return n
}

func parseValue(spec OptionSpec, v string, bareIsTrue bool) (any, error) {
	switch spec.Type {
	case OptString:
		return v, nil
	case OptSize:
		n, err := ParseSize(v)
		if err != nil {
			return nil, fmt.Errorf("parameter '%s': %w", spec.Name, err)
		}
		return n, nil
	case OptNumber:
		n, err := strconv.ParseInt(v, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("parameter '%s' expects a number, got '%s'", spec.Name, v)
		}
		return n, nil
	case OptBool:
		switch strings.ToLower(v) {
		case "on", "true", "yes":
			return true, nil
		case "off", "false", "no":
			return false, nil
		case "":
			if bareIsTrue {
				return true, nil
			}
		}
		return nil, fmt.Errorf("parameter '%s' expects 'on' or 'off', got '%s'", spec.Name, v)
	}
	return nil, fmt.Errorf("parameter '%s': unknown type", spec.Name)
}

// ParseSize parses a byte count with an optional binary suffix: 512, 64k,
// 10M, 2G, 1.5T. Like qemu-img, a plain number is bytes and suffixes are
// powers of 1024. Negative, fractional-byte and overflowing values fail.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("invalid size '%s'", s)
	}
	mult := int64(1)
	switch strings.ToUpper(t[len(t)-1:]) {
	case "B":
		t = t[:len(t)-1]
	case "K":
		mult, t = 1<<10, t[:len(t)-1]
	case "M":
		mult, t = 1<<20, t[:len(t)-1]
	case "G":
		mult, t = 1<<30, t[:len(t)-1]
	case "T":
		mult, t = 1<<40, t[:len(t)-1]
	case "P":
		mult, t = 1<<50, t[:len(t)-1]
	case "E":
		mult, t = 1<<60, t[:len(t)-1]
	}
	if t == "" || t[0] == '-' || t[0] == '+' {
		return 0, fmt.Errorf("invalid size '%s'", s)
	}
	if n, err := strconv.ParseUint(t, 10, 63); err == nil {
		if n > uint64((1<<63-1)/mult) {
			return 0, fmt.Errorf("size '%s' is too large", s)
		}
		return int64(n) * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("invalid size '%s'", s)
	}
	v := f * float64(mult)
	if v >= 1<<63 {
		return 0, fmt.Errorf("size '%s' is too large", s)
	}
	if v != float64(int64(v)) {
		return 0, fmt.Errorf("size '%s' is not a whole number of bytes", s)
	}
	return int64(v), nil
}

// FormatSize renders a byte count as qemu-img does ("64 MiB", "0.977 KiB"):
// three significant digits, switching to the next unit from 1000 upwards.
func FormatSize(n int64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	_, e := math.Frexp(float64(n) / (1000.0 / 1024.0))
	i := (e - 1) / 10
	if i < 0 {
		i = 0
	}
	if i >= len(suffixes) {
		i = len(suffixes) - 1
	}
	v := float64(n) / float64(uint64(1)<<(10*i))
	return strconv.FormatFloat(v, 'g', 3, 64) + " " + suffixes[i] + "B"
}
