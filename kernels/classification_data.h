// Classification task files for BERT fine-tuning: one `label<TAB>text` per line (UTF-8 or any bytes; the
// text is tokenised as bytes). Labels are names; the training file's sorted distinct labels define the class
// ids, and an evaluation file may use only those. Host only. Errors name the file, the line and what was
// expected, and the loader returns false instead of crashing.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <vector>
#include "mlm.h"

#define CLASSIFICATION_MAX_LINE (1 << 20)

struct ClassificationSet {
    std::vector<std::string> label_names;  // class id -> name
    std::vector<int> labels;               // per example
    std::vector<std::string> texts;        // per example, raw bytes
};

// reads f (named path in messages); if known_labels is null the file's own sorted labels become the classes
// (a training file), else every label must be one of known_labels (an evaluation file)
inline bool classification_read(FILE* f, const char* path, const std::vector<std::string>* known_labels,
                                ClassificationSet* set) {
    std::vector<std::pair<std::string, std::string>> rows;
    std::string line;
    int c, line_number = 1;
    bool ok = true;
    while (ok) {
        line.clear();
        while ((c = fgetc(f)) != EOF && c != '\n' && line.size() <= CLASSIFICATION_MAX_LINE) line.push_back((char)c);
        if (line.size() > CLASSIFICATION_MAX_LINE) {
            fprintf(stderr, "%s:%d: line longer than %d bytes\n", path, line_number, CLASSIFICATION_MAX_LINE);
            ok = false;
            break;
        }
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty()) {
            size_t tab = line.find('\t');
            if (tab == std::string::npos || tab == 0 || tab + 1 == line.size()) {
                fprintf(stderr, "%s:%d: expected label<TAB>text with both parts non-empty\n", path, line_number);
                ok = false;
                break;
            }
            rows.push_back({line.substr(0, tab), line.substr(tab + 1)});
        }
        if (c == EOF) break;
        line_number++;
    }
    if (!ok) return false;
    if (rows.empty()) { fprintf(stderr, "%s: no examples (expected label<TAB>text lines)\n", path); return false; }
    set->label_names.clear();
    if (known_labels) {
        set->label_names = *known_labels;
    } else {
        for (auto& row : rows) set->label_names.push_back(row.first);
        std::sort(set->label_names.begin(), set->label_names.end());
        set->label_names.erase(std::unique(set->label_names.begin(), set->label_names.end()), set->label_names.end());
        if (set->label_names.size() < 2) { fprintf(stderr, "%s: one label only; a classification task needs at least 2\n", path); return false; }
    }
    set->labels.clear();
    set->texts.clear();
    for (size_t i = 0; i < rows.size(); i++) {
        auto it = std::find(set->label_names.begin(), set->label_names.end(), rows[i].first);
        if (it == set->label_names.end()) {
            fprintf(stderr, "%s: example %zu has label '%s', which the training file does not have\n", path, i + 1,
                    rows[i].first.c_str());
            return false;
        }
        set->labels.push_back((int)(it - set->label_names.begin()));
        set->texts.push_back(rows[i].second);
    }
    return true;
}

inline bool classification_load(const char* path, const std::vector<std::string>* known_labels,
                                ClassificationSet* set) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open classification file (expected label<TAB>text lines)\n", path); return false; }
    bool ok = classification_read(f, path, known_labels, set);
    fclose(f);
    return ok;
}

// the token row of one example: [CLS], its first T - 2 bytes, [SEP], then [PAD] up to T
inline void classification_tokens(const std::string& text, int T, int* row) {
    int n = std::min((int)text.size(), T - 2);
    row[0] = TOKEN_CLS;
    for (int t = 0; t < n; t++) row[1 + t] = (uint8_t)text[t];
    row[1 + n] = TOKEN_SEP;
    for (int t = n + 2; t < T; t++) row[t] = TOKEN_PAD;
}
