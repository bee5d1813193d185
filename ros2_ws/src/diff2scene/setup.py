"""ament_python build of the ROS 2 package ``diff2scene`` (for colcon on a ROS 2 machine).

The Python sources live once, at the repository top level; ``diff2scene`` (the ROS-free core),
``diff2scene_ros`` (the ROS layer), ``launch`` and ``models`` here are symbolic links to them.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "diff2scene"
HERE = Path(__file__).resolve().parent


def _files(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(HERE)) for p in HERE.glob(pattern) if p.is_file())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["diff2scene", "diff2scene.*", "diff2scene_ros",
                                    "diff2scene_ros.*"]),
    package_data={"diff2scene": ["py.typed", "data/*.txt", "data/*.yaml"],
                  "diff2scene_ros": ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", _files("launch/config/*.yaml") + _files("launch/config/*.rviz")),
        (f"share/{PACKAGE}/config/sensors", _files("launch/config/sensors/*.yaml")),
        # model profiles (segmenter architectures and where their weights come from)
        (f"share/{PACKAGE}/models", _files("models/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="diff2scene maintainers",
    maintainer_email="maintainers@diff2scene.dev",
    description="Open-vocabulary 3D semantic mapping (Diff2Scene) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "diff2scene_node = diff2scene_ros.node:main",
        ],
    },
)
