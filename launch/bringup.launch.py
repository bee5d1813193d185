"""Bring up the diff2scene mapping node (and rviz) with the package's parameter file.

    ros2 launch diff2scene bringup.launch.py
    ros2 launch diff2scene bringup.launch.py params_file:=/path/my_robot.yaml rviz:=false \
        color_topic:=/rs/color/image_raw depth_topic:=/rs/aligned_depth_to_color/image_raw

Topics are remapped here rather than configured as parameters (nvblox does the same), so the
node's names stay relative and one namespace argument moves the whole node.

Where `launch` is not installed (the pip environment), `diff2scene bringup` starts the same node:
it reads NODE_NAME and INPUT_TOPICS below (keep them plain literals) and takes one flag per
launch argument (`color_topic:=X` is `--color-topic X`); a test checks that the two agree.
"""

# ruff: noqa: I001  (isort would take "launch" for this directory, not the ROS 2 package)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# The two tables below are plain literals: `diff2scene bringup` reads them without `launch`.
#: Name of the mapping node (its services are /<namespace>/diff2scene/text_query, ...).
NODE_NAME = "diff2scene"
#: (launch argument, node-relative topic it remaps, default) of each input.
INPUT_TOPICS = (
    ("color_topic", "camera/color/image_raw", "/camera/color/image_raw"),
    ("depth_topic", "camera/depth/image_rect_raw", "/camera/depth/image_rect_raw"),
    ("camera_info_topic", "camera/color/camera_info", "/camera/color/camera_info"),
    ("pose_topic", "camera/pose", "/camera/pose"),
    ("odom_topic", "odom", "/odom"),
    ("instance_topic", "camera/instance/image_raw", "/camera/instance/image_raw"),
)


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("diff2scene")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "diff2scene.yaml"]),
            description="ROS 2 parameter file of the node (see config/diff2scene.yaml)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (bag replay)"
        ),
        DeclareLaunchArgument("rviz", default_value="true", description="Start rviz2"),
        DeclareLaunchArgument(
            "rviz_config",
            default_value=PathJoinSubstitution([share, "config", "diff2scene.rviz"]),
            description="rviz2 display configuration",
        ),
        *(
            DeclareLaunchArgument(arg, default_value=default, description=f"remaps {topic}")
            for arg, topic, default in INPUT_TOPICS
        ),
    ]
    mapper = Node(
        package="diff2scene",
        executable="diff2scene_node",
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"use_sim_time": LaunchConfiguration("use_sim_time")},
        ],
        remappings=[(topic, LaunchConfiguration(arg)) for arg, topic, _ in INPUT_TOPICS],
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="log",
    )
    return LaunchDescription([*arguments, mapper, rviz])
