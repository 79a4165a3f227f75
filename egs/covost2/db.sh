# Corpus locations. Empty means: build and use the embedded synthetic corpus (espeak-ng).
# For real CoVoST2 set both, e.g.
#   COMMONVOICE=/corpora/cv-corpus-4-2019-12-10      (holds <lang>/clips/*.mp3, <lang>/validated.tsv)
#   COVOST2=/corpora/covost2                          (holds covost_v2.<lang>_en.tsv)
COMMONVOICE=${COMMONVOICE:-}
COVOST2=${COVOST2:-}
