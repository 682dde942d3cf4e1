package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// checkKeys compares a decoded TOML tree with the schema of Config. It
// returns a Problem for every key the schema does not know and for every
// value of the wrong type, sorted by line.
//
// The decoder alone is not strict enough: it matches keys to fields without
// regard to case, so "Node" would silently set Node, and it stops at the
// first value of the wrong type. Walking the tree ourselves also yields the
// exact path of each key, array indexes included.
func checkKeys(raw map[string]any, file string, lines map[string]int) []*Problem {
	kc := keyChecker{file: file, lines: lines}
	kc.table(raw, "", reflect.TypeFor[Config]())
	slices.SortStableFunc(kc.probs, func(a, b *Problem) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return strings.Compare(a.Key, b.Key)
	})
	return kc.probs
}

type keyChecker struct {
	file  string
	lines map[string]int
	probs []*Problem
}

func (kc *keyChecker) add(key, msg string) {
	kc.probs = append(kc.probs, &Problem{File: kc.file, Line: lineOf(kc.lines, key), Key: key, Msg: msg})
}

// table checks the keys of the TOML table m at path against struct type t.
func (kc *keyChecker) table(m map[string]any, path string, t reflect.Type) {
	fields := tomlFields(t)
	for k, v := range m {
		key := joinKey(path, k)
		i := slices.IndexFunc(fields, func(f reflect.StructField) bool { return tomlName(f) == k })
		if i < 0 {
			kc.add(key, unknownKeyMsg(path, k, fields))
			continue
		}
		kc.value(v, key, fields[i].Type)
	}
}

// value checks the TOML value v at key against type t.
func (kc *keyChecker) value(v any, key string, t reflect.Type) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			kc.add(key, fmt.Sprintf("want a [%s] section, got %s", stripIndexes(key), typeName(v)))
			return
		}
		kc.table(m, key, t)
	case reflect.Slice:
		elems, ok := asArray(v)
		if !ok {
			if t.Elem().Kind() == reflect.Struct {
				kc.add(key, fmt.Sprintf("want [[%s]] sections, got %s", stripIndexes(key), typeName(v)))
			} else {
				kc.add(key, fmt.Sprintf(`want an array of strings, got %s; put it in brackets, such as ["a", "b"]`, typeName(v)))
			}
			return
		}
		for i, e := range elems {
			kc.value(e, key+"["+strconv.Itoa(i)+"]", t.Elem())
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			msg := "want a string, got " + typeName(v)
			if isScalar(v) {
				msg += "; put the value in quotes"
			}
			kc.add(key, msg)
		}
	case reflect.Int64:
		if _, ok := v.(int64); !ok {
			msg := "want a whole number, got " + typeName(v)
			if _, ok := v.(string); ok {
				msg += "; remove the quotes"
			}
			kc.add(key, msg)
		}
	default:
		panic("config: no key check for " + t.String())
	}
}

// tomlFields returns the fields of struct type t that TOML decodes into.
func tomlFields(t reflect.Type) []reflect.StructField {
	var fields []reflect.StructField
	for f := range t.Fields() {
		if f.IsExported() && tomlName(f) != "" {
			fields = append(fields, f)
		}
	}
	return fields
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

func asArray(v any) ([]any, bool) {
	switch v := v.(type) {
	case []any:
		return v, true
	case []map[string]any:
		elems := make([]any, len(v))
		for i, m := range v {
			elems[i] = m
		}
		return elems, true
	}
	return nil, false
}

func isScalar(v any) bool {
	switch v.(type) {
	case int64, float64, bool, time.Time:
		return true
	}
	return false
}

// typeName names the type of a decoded TOML value for a message.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "a whole number"
	case float64:
		return "a decimal number"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date or time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// unknownKeyMsg explains an unknown key k of the table at path, suggesting
// the known key it most likely means.
func unknownKeyMsg(path, k string, fields []reflect.StructField) string {
	table := stripIndexes(path)
	switch norm := normalizeKey(k); {
	case table == "route" && (norm == "token" || norm == "password"):
		return "unknown key: a secret never goes in the config; name a file with token-file or a variable with token-env"
	case table == "database" && norm == "password":
		return "unknown key: a password never goes in the config; put it in a file and name it with password-file"
	case table == "listen.source" && norm == "token":
		return `unknown key: an upstream stores only the token's hash; set token-sha256 to what "pgcourier token --node ID" prints`
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = tomlName(f)
	}
	if s := closestKey(k, names); s != "" {
		return "unknown key (did you mean " + s + "?)"
	}
	where := "at the top level"
	switch {
	case strings.HasSuffix(path, "]"):
		where = "in [[" + table + "]]"
	case table != "":
		where = "in [" + table + "]"
	}
	return "unknown key; the keys " + where + " are " + strings.Join(names, ", ")
}

// closestKey returns the name in names that k most likely misspells, or ""
// if none is close.
func closestKey(k string, names []string) string {
	nk := normalizeKey(k)
	best, bestDist := "", 0
	for _, name := range names {
		if normalizeKey(name) == nk {
			return name
		}
		d := editDistance(nk, name)
		limit := 2
		if len(name) <= 4 {
			limit = 1
		}
		if d <= limit && (best == "" || d < bestDist) {
			best, bestDist = name, d
		}
	}
	return best
}

// normalizeKey folds the spellings of a key that differ only in case or in
// the word separator.
func normalizeKey(k string) string {
	return strings.NewReplacer("_", "-", " ", "-").Replace(strings.ToLower(k))
}

// editDistance returns the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keyPart writes one part of a key path: bare when TOML allows it, quoted
// otherwise.
func keyPart(k string) string {
	if k == "" {
		return `""`
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return strconv.Quote(k)
		}
	}
	return k
}

// joinKey appends the key k to the key path path.
func joinKey(path, k string) string {
	if path == "" {
		return keyPart(k)
	}
	return path + "." + keyPart(k)
}

// stripIndexes removes the array indexes from a key path:
// "route[1].url" becomes "route.url".
func stripIndexes(path string) string {
	var b strings.Builder
	inQuote := false
	skip := false
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case inQuote:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(path) {
				i++
				b.WriteByte(path[i])
			} else if c == '"' {
				inQuote = false
			}
		case skip:
			skip = c != ']'
		case c == '[':
			skip = true
		case c == '"':
			inQuote = true
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
