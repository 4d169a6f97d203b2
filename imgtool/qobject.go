// Package imgtool is the logic behind vdisk's qemu-img-like commands:
// the convert engine, image comparison, and the rendering of info, map and
// check results in qemu-img's human and JSON formats. cmd/vdisk is a thin
// layer of flags over it, and other parts (the NBD server, tests) reuse it.
package imgtool

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Dict is a JSON object whose members print in the order QEMU's QDict
// iterates them. qemu-img builds its JSON through a hash table, so its key
// order looks arbitrary but is fixed by the key names alone; reproducing
// the hash makes our output match qemu-img's byte for byte.
type Dict struct {
	keys []string
	vals []any
}

// Set adds a member. Add members in the order QEMU's QAPI schema declares
// them: that decides the order of keys that share a hash bucket.
func (d *Dict) Set(key string, v any) *Dict {
	d.keys = append(d.keys, key)
	d.vals = append(d.vals, v)
	return d
}

// Len is the number of members.
func (d *Dict) Len() int { return len(d.keys) }

// Get returns the member stored under key.
func (d *Dict) Get(key string) (any, bool) {
	for i, k := range d.keys {
		if k == key {
			return d.vals[i], true
		}
	}
	return nil, false
}

// qdictBuckets is QDICT_BUCKET_MAX.
const qdictBuckets = 512

// tdbHash is the hash QEMU's qdict uses for its keys.
func tdbHash(s string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(s))
	for i := 0; i < len(s); i++ {
		v += uint32(s[i]) << (uint(i) * 5 % 24)
	}
	return 1103515243*v + 12345
}

// ordered returns the member indexes in QDict iteration order: by bucket,
// and within a bucket newest first (entries are inserted at the head).
func (d *Dict) ordered() []int {
	idx := make([]int, len(d.keys))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ba, bb := tdbHash(d.keys[idx[a]])%qdictBuckets, tdbHash(d.keys[idx[b]])%qdictBuckets
		if ba != bb {
			return ba < bb
		}
		return idx[a] > idx[b]
	})
	return idx
}

// MarshalJSON writes the compact form, for embedding.
func (d *Dict) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	writeJSON(&b, d, -1)
	return []byte(b.String()), nil
}

// PrettyJSON renders v as QEMU's pretty JSON writer does: four spaces per
// level, "key": value, a newline after the last closing bracket not
// included.
func PrettyJSON(v any) string {
	var b strings.Builder
	writeJSON(&b, v, 0)
	return b.String()
}

// writeJSON writes v; indent < 0 means compact.
func writeJSON(b *strings.Builder, v any, indent int) {
	nl := func(level int) {
		if indent >= 0 {
			b.WriteString("\n")
			b.WriteString(strings.Repeat("    ", level))
		}
	}
	sep := ": "
	if indent < 0 {
		sep = ":"
	}
	next := indent
	if indent >= 0 {
		next = indent + 1
	}
	switch x := v.(type) {
	case *Dict:
		b.WriteString("{")
		for n, i := range x.ordered() {
			if n > 0 {
				b.WriteString(",")
			}
			nl(next)
			b.WriteString(jsonString(x.keys[i]))
			b.WriteString(sep)
			writeJSON(b, x.vals[i], next)
		}
		nl(indent)
		b.WriteString("}")
	case []any:
		b.WriteString("[")
		for n, e := range x {
			if n > 0 {
				b.WriteString(",")
			}
			nl(next)
			writeJSON(b, e, next)
		}
		nl(indent)
		b.WriteString("]")
	case string:
		b.WriteString(jsonString(x))
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int:
		b.WriteString(strconv.Itoa(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(x, 10))
	case uint32:
		b.WriteString(strconv.FormatUint(uint64(x), 10))
	case int32:
		b.WriteString(strconv.FormatInt(int64(x), 10))
	case float64:
		b.WriteString(strconv.FormatFloat(x, 'g', 17, 64))
	case nil:
		b.WriteString("null")
	default:
		// Anything else (a driver's own struct) goes through encoding/json.
		j, err := json.Marshal(x)
		if err != nil {
			j = []byte(jsonString(fmt.Sprint(x)))
		}
		b.Write(j)
	}
}

func jsonString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

// dumpHuman writes a format-specific dictionary as qemu-img's human
// output does: one "key: value" line per member, dashes in keys shown as
// spaces, nested containers indented by four spaces, list items as [i]:.
func dumpHuman(b *strings.Builder, v any, level int) {
	pad := strings.Repeat("    ", level)
	switch x := v.(type) {
	case *Dict:
		for _, i := range x.ordered() {
			key := strings.ReplaceAll(x.keys[i], "-", " ")
			if isComposite(x.vals[i]) {
				fmt.Fprintf(b, "%s%s:\n", pad, key)
			} else {
				fmt.Fprintf(b, "%s%s: ", pad, key)
			}
			dumpHuman(b, x.vals[i], level+1)
		}
	case []any:
		for n, e := range x {
			if isComposite(e) {
				fmt.Fprintf(b, "%s[%d]:\n", pad, n)
			} else {
				fmt.Fprintf(b, "%s[%d]: ", pad, n)
			}
			dumpHuman(b, e, level+1)
		}
	case string:
		b.WriteString(x + "\n")
	case float64:
		b.WriteString(strconv.FormatFloat(x, 'f', 6, 64) + "\n")
	default:
		fmt.Fprintf(b, "%v\n", x)
	}
}

func isComposite(v any) bool {
	switch v.(type) {
	case *Dict, []any:
		return true
	}
	return false
}
