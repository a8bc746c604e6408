"""Joint sets and index maps shared by SPIN, DynaBOA and VIBE (shared/reference/FORMATS.md, section 2)."""

SMPL_JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
]
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]

# The 21 joints smplx picks from mesh vertices (smplx vertex_joint_selector order, SMPL-H ids).
VERTEX_JOINT_NAMES = [
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky",
    "rthumb", "rindex", "rmiddle", "rring", "rpinky",
]

OPENPOSE25_NAMES = [
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow",
    "OP LWrist", "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee",
    "OP LAnkle", "OP REye", "OP LEye", "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe",
    "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
]
J24_NAMES = [
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)",
    "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
]
JOINT_NAMES_49 = OPENPOSE25_NAMES + J24_NAMES
NUM_OPENPOSE = 25  # the 24 "GT" joints are JOINT_NAMES_49[25:]

# Rows of J_regressor_extra (appended after the 24 SMPL + 21 vertex joints, as indices 45..53).
EXTRA_JOINT_NAMES = [
    "Right Hip", "Left Hip", "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)",
    "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)",
]

# Index into [24 SMPL, 21 vertex joints, 9 extra] for each of the 49 SPIN joints.
JOINT_MAP_49 = [
    24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    8, 5, 45, 46, 4, 7, 21, 19, 17, 16, 18, 20, 47, 48, 49, 50, 51, 52, 53, 24, 26, 25, 28, 27,
]

# Rows of J_regressor_h36m.
H36M17_NAMES = [
    "pelvis", "lhip", "lknee", "lankle", "rhip", "rknee", "rankle", "spine", "neck", "head",
    "headtop", "lshoulder", "lelbow", "lwrist", "rshoulder", "relbow", "rwrist",
]
H36M_TO_J17 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
H36M_TO_J14 = H36M_TO_J17[:14]
J24_TO_J17 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17]
J24_TO_J14 = J24_TO_J17[:14]
J14_NAMES = [J24_NAMES[i] for i in J24_TO_J14]  # LSP order; indices 2, 3 are the hips

# Raw Human3.6M 32-joint indices placed into the 24 GT order (SPIN h36m preprocessing).
H36M32_TO_J24_SOURCE = [11, 6, 7, 8, 1, 2, 3, 12, 24, 14, 15, 17, 18, 19, 25, 26, 27]
H36M32_TO_J24_TARGET = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]

COCO17_NAMES = [
    "nose", "leye", "reye", "lear", "rear", "lshoulder", "rshoulder", "lelbow", "relbow",
    "lwrist", "rwrist", "lhip", "rhip", "lknee", "rknee", "lankle", "rankle",
]
# COCO joint k goes to 49-index COCO17_TO_J49[k].
COCO17_TO_J49 = [44, 45, 46, 47, 48, 34, 33, 35, 32, 36, 31, 28, 27, 29, 26, 30, 25]

# OpenPose COCO-18 (3DPW poses2d): BODY_25 without MidHip and the feet.
OPENPOSE18_TO_J49 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
