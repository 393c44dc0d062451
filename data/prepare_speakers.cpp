// prepare_speakers: a real classification task built from the bundled play text, for BERT fine-tuning.
//   ./tools/prepare_speakers data/tinyshakespeare.txt data/speakers
// Each speech ("NAME:" on its own line, then the lines until a blank line) is a passage; the task is to tell
// which of the 8 speakers with the most speeches says it. Passages of other speakers are dropped. About 20%
// of the passages (chosen by the shared hash, seed 0, stream 0x53504b52, index = passage number) are held out.
// Output: data/speakers_train.tsv and data/speakers_val.tsv, one `label<TAB>text` per line (newlines inside a
// speech become spaces; tabs never occur in the text), the format train_int4's classifier reads for any
// user task. Prints the class counts and the majority-class accuracy on the held-out split (the baseline).
#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>
#include "rng.h"

#define NUM_SPEAKERS 8
#define HOLDOUT_FRACTION 0.2f

struct Speech { std::string speaker, text; };

static bool is_speaker_line(const std::string& line) {
    if (line.size() < 2 || line.back() != ':') return false;
    for (size_t i = 0; i + 1 < line.size(); i++) {
        char c = line[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == ' ' || c == '\'' || c == '-')) return false;
    }
    return line[0] >= 'A' && line[0] <= 'Z';
}

static bool write_tsv(const std::string& path, const std::vector<const Speech*>& rows) {
    std::string tmp = path + ".tmp";
    std::ofstream out(tmp, std::ios::binary);
    for (const Speech* s : rows) out << s->speaker << '\t' << s->text << '\n';
    out.close();
    if (!out || rename(tmp.c_str(), path.c_str()) != 0) {
        fprintf(stderr, "%s: write failed\n", path.c_str());
        remove(tmp.c_str());
        return false;
    }
    printf("wrote %s: %zu passages\n", path.c_str(), rows.size());
    return true;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s play.txt output_prefix  (writes output_prefix_train.tsv and _val.tsv)\n", argv[0]);
        return 1;
    }
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) { fprintf(stderr, "%s: cannot open input text\n", argv[1]); return 1; }
    std::vector<Speech> speeches;
    std::string line;
    bool in_speech = false;
    while (std::getline(in, line)) {
        if (is_speaker_line(line)) {
            speeches.push_back({line.substr(0, line.size() - 1), ""});
            in_speech = true;
        } else if (line.empty()) {
            in_speech = false;
        } else if (in_speech) {
            std::string& text = speeches.back().text;
            text += (text.empty() ? "" : " ") + line;
        }
    }
    std::map<std::string, int> counts;
    for (const Speech& s : speeches) { if (!s.text.empty()) counts[s.speaker]++; }
    std::vector<std::pair<int, std::string>> ranked;
    for (auto& [name, n] : counts) ranked.push_back({-n, name});
    std::sort(ranked.begin(), ranked.end());
    if (ranked.size() < NUM_SPEAKERS) {
        fprintf(stderr, "%s: found %zu speakers (\"NAME:\" lines), expected at least %d\n", argv[1], ranked.size(), NUM_SPEAKERS);
        return 1;
    }
    std::map<std::string, int> chosen;
    for (int i = 0; i < NUM_SPEAKERS; i++) chosen[ranked[i].second] = i;
    std::vector<const Speech*> train, val;
    std::vector<int> val_counts(NUM_SPEAKERS, 0);
    uint32_t key = rng_key(0, 0x53504b52u);
    for (size_t k = 0; k < speeches.size(); k++) {
        const Speech& s = speeches[k];
        if (s.text.empty() || !chosen.count(s.speaker)) continue;
        bool held_out = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)k)) < HOLDOUT_FRACTION;
        (held_out ? val : train).push_back(&s);
        if (held_out) val_counts[chosen[s.speaker]]++;
    }
    for (int i = 0; i < NUM_SPEAKERS; i++) {
        printf("class %d %-18s %4d passages (%d held out)\n", i, ranked[i].second.c_str(), -ranked[i].first, val_counts[i]);
    }
    int majority = *std::max_element(val_counts.begin(), val_counts.end());
    printf("majority-class baseline on the held-out split: %.1f%% (%d of %zu)\n", 100.0 * majority / val.size(),
           majority, val.size());
    std::string prefix = argv[2];
    return write_tsv(prefix + "_train.tsv", train) && write_tsv(prefix + "_val.tsv", val) ? 0 : 1;
}
