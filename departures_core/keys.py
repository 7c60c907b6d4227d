"""Every AnnData key and run-folder file name we read or write."""

# obs columns written by the library
PERTURBATION = "perturbation"
CELL_TYPE = "cell_type"
DOSE = "dose"
CONTROL_CELL = "control_cell"
HELD_OUT = "held_out"

# var / layers / uns / obsm
COUNTS_LAYER = "counts"
TRAJECTORY_X = "X_trajectory"
TRAJECTORY_D = "D_trajectory"
TRAJECTORY_T = "trajectory_t"
PREDICTION_UNS = "departures"

# auto-detection candidates, most specific first
PERTURBATION_CANDIDATES = (
    "perturbation",
    "condition",
    "guide_ids",
    "gene",
    "target_gene",
    "perturbation_name",
    "treatment",
    "drug",
)
CONTROL_CANDIDATES = (
    "control",
    "ctrl",
    "non-targeting",
    "non_targeting",
    "nontargeting",
    "vehicle",
    "dmso",
    "unperturbed",
    "nt",
)
CELL_TYPE_CANDIDATES = ("cell_type", "celltype", "cell_line", "cell_type_name", "cell_label")
DOSE_CANDIDATES = ("dose", "dose_value", "dose_val", "dose_uM", "dose_um")

COMBINATION_DELIMITER = "+"
ALL_CELLS = "all"

# run folder
CONFIG_FILE = "config.json"
MODEL_FILE = "model.pt"
SPLIT_FILE = "split.json"
HISTORY_FILE = "history.csv"
DATA_FILE = "data.h5ad"
RESPONDERS_FILE = "responders.json"  # fraction of unaffected cells per condition
PROGRESS_FILE = "progress.json"  # live step/total/losses, rewritten about once a second
STOP_FILE = "STOP"  # created by the app (or a user) to stop training after the current step
